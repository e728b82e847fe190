"""The wide net: a random-looking value next to a key that sounds like a credential.

The named rules (``secrets.SECRET_RULES``) know vendor shapes and keys that *say*
password/secret/token. Many credentials sit under vaguer keys — ``sig=``, ``auth:``,
``sessionid=``, ``x-api-key:``, ``"license": "…"`` — where a readable value (``auth=pam``,
``session=42``) is ordinary and must stay. This rule redacts such a value only when it
looks random: at least 16 characters, letters and digits both, and a Shannon entropy of
at least 3.3 bits per character (gitleaks' generic-api-key uses 3.5 on a wider alphabet;
a 16-character random base64 string averages ~3.6, an English word under 3).

It is one more redaction rule like the others, in every profile: the leak gate re-runs
the same rules, so a value this net recognises is redacted, never a reason to refuse a
bundle.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from agent.redact.secrets import SecretRule, marker
from agent.redact.secrets.generic import KV_KEYWORD

__all__ = ["ENTROPY_RULE", "KEY_RULE", "NET_FOLLOW", "NET_WORDS", "looks_random", "whole_value_rule"]

MIN_LEN = 16
MIN_BITS = 3.3
NAME = "high-entropy-secret"
KEY_RULE = "kv-secret"

# Key endings that may hold a credential but are too common to redact unconditionally.
_NET_KEY = re.compile(r"(?i)(?:key|auth|sig|signature|session|sessid|sessionid|sid|cookie|jwt|cred|creds)$")
# The words the keys above contain (hints): the pipeline visits a line only where one of
# them is followed by key characters and a separator (``NET_FOLLOW``), so "publickey for"
# or "Started Session 3" cost a lookup, not a line.
NET_WORDS = ("key", "auth", "sig", "sess", "sid", "cookie", "jwt", "cred")
NET_FOLLOW = re.compile(rb"[a-z0-9_.-]{0,40}[\"']?[:=]")
# The separator follows the key directly (``key=``, ``key:``, ``"key": ``).
_PATTERN = re.compile(
    r"(?<![\w.-])(?P<key>[A-Za-z_][\w.-]{0,60})[\"']?(?P<sep>[:=][ \t]*)[\"']?"
    r"(?P<val>[A-Za-z0-9+/=_.~-]{" + str(MIN_LEN) + r",})"
)

_NUMBER_LITERAL = re.compile(r"0[xX][0-9a-fA-F]+")


def looks_random(value: str) -> bool:
    """Long enough, mixed letters and digits, and high Shannon entropy per character."""
    if len(value) < MIN_LEN or "[REDACTED" in value:
        return False
    if _NUMBER_LITERAL.fullmatch(value):
        # 0x14ede63a5a70002: a number a program printed (ZooKeeper's session ids, addresses,
        # handles), not a credential; web session tokens are not written as C hex literals.
        return False
    if not any(c.isdigit() for c in value) or not any(c.isalpha() for c in value):
        return False
    n = len(value)
    bits = -sum(c / n * math.log2(c / n) for c in Counter(value).values())
    return bits >= MIN_BITS


def whole_value_rule(key: str, value: str) -> str | None:
    """The rule that redacts a structured field's whole value by its key, if any.

    Used for JSON members, where a key and its value are separate strings: the text
    rules would never see ``password`` and its value side by side.
    """
    if not value or "[REDACTED" in value:
        return None
    if KV_KEYWORD.search(key) is not None:
        return KEY_RULE
    if _NET_KEY.search(key) is not None and looks_random(value):
        return NAME
    return None


@dataclass(frozen=True)
class _NetRule(SecretRule):
    def apply(self, line: str) -> tuple[str, int]:
        n = 0

        def repl(m: re.Match[str]) -> str:
            nonlocal n
            if _NET_KEY.search(m.group("key")) is None or not looks_random(m.group("val")):
                return m.group(0)
            n += 1
            start, end = m.span("val")
            return m.group(0)[: start - m.start()] + marker(NAME) + m.group(0)[end - m.start() :]

        out = self.pattern.sub(repl, line)
        return out, n


def _unused(m: re.Match[str]) -> str:  # _NetRule.apply does the replacing itself
    return m.group(0)

ENTROPY_RULE: SecretRule = _NetRule(
    NAME,
    NET_WORDS,
    _PATTERN,
    _unused,
    fold=True,
)
