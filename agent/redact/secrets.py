"""Secret rules: always applied, in every profile.

Each rule has cheap substring *hints*; its regex runs only on a line that holds one of
them, so a plain syslog line costs a handful of ``in`` tests (Datadog's scrubber does
the same). Hints marked case-insensitive are tested on the lower-cased line.

A replacement keeps the shape readable — ``AKIA…[REDACTED:aws-access-key]``,
``password=[REDACTED:kv-secret]`` — so an engineer still sees *what* was there. The
kv rule refuses values that already hold ``[REDACTED`` so a vendor token caught by its
own rule is not counted twice (the bug found in field-notes §5.3).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RULESET_VERSION", "SECRET_RULES", "SecretRule", "marker"]

RULESET_VERSION = "casefile-secrets/1"


def marker(rule: str) -> str:
    return f"[REDACTED:{rule}]"


@dataclass(frozen=True)
class SecretRule:
    """One rule: hints (any must occur), a regex and how a match is replaced."""

    name: str
    hints: tuple[str, ...]
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str]
    fold: bool = False  # hints are lower-case and tested on the lower-cased line

    def wanted(self, line: str, lower: str) -> bool:
        text = lower if self.fold else line
        for h in self.hints:  # noqa: SIM110 - any() over a generator costs twice this per line
            if h in text:
                return True
        return False

    def apply(self, line: str) -> tuple[str, int]:
        """The line with this rule's matches replaced, and how many matched."""
        return self.pattern.subn(self.replace, line)


@dataclass(frozen=True)
class _KvRule(SecretRule):
    """key=value pairs whose key names a secret.

    A pair whose key names none keeps its key and separator and the scan goes on from its
    value, which may start the next pair: in ``kernel: password: x`` the first match is
    key ``kernel``, value ``password:``; the secret is the pair after it.
    """

    def apply(self, line: str) -> tuple[str, int]:
        parts: list[str] = []
        at = matched = 0
        while (m := self.pattern.search(line, at)) is not None:
            if _KV_KEYWORD.search(m.group("key")) is None:
                parts.append(line[at : m.start("val")])
                at = m.start("val")
                continue
            parts.append(line[at : m.start()])
            parts.append(self.replace(m))
            at = m.end()
            matched += 1
        if not matched:
            return line, 0
        parts.append(line[at:])
        return "".join(parts), matched


def _keep_prefix(n: int, rule: str) -> Callable[[re.Match[str]], str]:
    def repl(m: re.Match[str]) -> str:
        return m.group(0)[:n] + "…" + marker(rule)

    return repl


def _value_group(rule: str, group: str = "val") -> Callable[[re.Match[str]], str]:
    """Replace only the named group, keeping key, separator and quotes around it."""

    def repl(m: re.Match[str]) -> str:
        start, end = m.span(group)
        base = m.start(0)
        whole = m.group(0)
        value = m.group(group)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            return whole[: start - base + 1] + marker(rule) + whole[end - base - 1 :]
        return whole[: start - base] + marker(rule) + whole[end - base :]

    return repl


# A key names a secret when it holds one of these words; checked on the key alone, after
# a cheap key=value match, because a keyword alternation inside [\w.-]* backtracks badly.
_KV_KEYWORD = re.compile(
    r"(?i)passw(?:or)?d|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|credential|client[_-]?key|key[_-]?data|auth[_-]?key|session[_-]?key|signing[_-]?key|encryption[_-]?key|master[_-]?key"
    r"|(?:^|[_.-])(?:pass|pwd)$"
)
# A value: quoted (may hold blanks) or a run up to a blank or a delimiter. Values that
# already hold a marker were caught by a more specific rule.
_VALUE = r"(?P<val>\"(?:[^\"\\]|\\.)*\"|'[^']*'|(?!\S*\[REDACTED)[^\s\"',;&<>]+)"

_KV_PATTERN = re.compile(
    r"(?<![\w./-])(?:--?)?(?P<key>[A-Za-z_][\w.-]{0,80})[\"']?(?P<sep>[ \t]*[:=][ \t]*)" + _VALUE
)


SECRET_RULES: tuple[SecretRule, ...] = (
    # Whole PEM/OpenSSH blocks within one line (JSON with \n escapes); multi-line blocks
    # are handled by the pipeline's block state.
    SecretRule(
        "private-key",
        ("-----BEGIN",),
        re.compile(
            r"(-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----)"
            r".*?(-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----)"
        ),
        lambda m: m.group(1) + marker("private-key") + m.group(2),
    ),
    SecretRule(
        "aws-access-key",
        ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
        re.compile(r"(?<![A-Z0-9])(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}(?![A-Z0-9])"),
        _keep_prefix(4, "aws-access-key"),
    ),
    SecretRule(
        "aws-secret-key",
        ("secret",),
        re.compile(
            r"(?i)(?:aws)?_?secret_?(?:access)?_?key[\"']?\s*[:=]\s*[\"']?"
            r"(?P<val>(?!\[REDACTED)[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
        ),
        _value_group("aws-secret-key"),
        fold=True,
    ),
    SecretRule(
        "github-token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
        _keep_prefix(4, "github-token"),
    ),
    SecretRule(
        "gitlab-token",
        ("glpat-", "glptt-", "gldt-", "glrt-", "glcbt-"),
        re.compile(r"(?<![A-Za-z0-9_-])gl(?:pat|ptt|dt|rt|cbt)-[A-Za-z0-9_-]{20,}"),
        _keep_prefix(6, "gitlab-token"),
    ),
    SecretRule(
        "slack-token",
        ("xox", "xapp-", "hooks.slack.com/"),
        re.compile(
            r"(?:xox[abposr]-[A-Za-z0-9-]{10,}|xapp-[0-9]-[A-Za-z0-9-]{10,}"
            r"|(?<=hooks\.slack\.com/services/)[A-Za-z0-9/_-]{20,})"
        ),
        _keep_prefix(5, "slack-token"),
    ),
    SecretRule(
        "stripe-key",
        ("k_live_", "k_test_", "k_prod_"),
        re.compile(r"(?<![A-Za-z0-9])[sr]k_(?:live|test|prod)_[A-Za-z0-9]{10,255}"),
        _keep_prefix(8, "stripe-key"),
    ),
    SecretRule(
        "gcp-api-key",
        ("AIza",),
        re.compile(r"(?<![A-Za-z0-9_-])AIza[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"),
        _keep_prefix(4, "gcp-api-key"),
    ),
    SecretRule(
        "azure-key",
        ("accountkey", "sharedaccesskey", "sig="),
        re.compile(
            r"(?i)(?:AccountKey|SharedAccessKey|(?<=[?&])sig)=(?P<val>(?!\[REDACTED)[A-Za-z0-9%+/]{16,}(?:={0,2}|(?:%3D){0,2}))"
        ),
        _value_group("azure-key"),
        fold=True,
    ),
    SecretRule(
        "jwt",
        ("eyJ",),
        re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}={0,2}"),
        _keep_prefix(3, "jwt"),
    ),
    SecretRule(
        "auth-header",
        ("authorization", "bearer", "cookie"),
        re.compile(
            r"(?i)(?:(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest|negotiate"
            r"|apikey|sso-key)\s+)?+|\bbearer\s+(?=[A-Za-z0-9._~+/=-]{16,})|(?:set-)?cookie[\"']?\s*[:=]\s*[\"']?)"
            r"(?P<val>(?!\[REDACTED)[^\s\"';]+(?:[ ]*;[ ]*[^\s\"';]+)*)"
        ),
        _value_group("auth-header"),
        fold=True,
    ),
    SecretRule(
        "url-credentials",
        ("://",),
        re.compile(r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{1,30}://[^\s:/@\"'<>]*:(?P<val>(?!\[REDACTED)[^\s@/\"'<>]+)@"),
        _value_group("url-credentials"),
    ),
    SecretRule(
        "cli-secret",
        ("--pass", "-pass", "--token", "--secret", "--api-key", "--apikey", "--client-secret"),
        re.compile(
            r"(?i)(?<!\S)--?(?:password|passwd|pass|token|secret|api-key|apikey|client-secret)[ \t]+"
            r"(?P<val>(?!-)(?!\S*\[REDACTED)[^\s\"']+)"
        ),
        _value_group("cli-secret"),
        fold=True,
    ),
    SecretRule(
        "cli-user-password",
        ("-u ", "--user"),
        re.compile(r"(?<!\S)(?:-u|--user)[ \t]+[^\s:\"']+:(?P<val>(?!\S*\[REDACTED)[^\s\"']+)"),
        _value_group("cli-user-password"),
        fold=True,
    ),
    _KvRule(
        "kv-secret",
        ("pass", "secret", "token", "credential", "_key", "-key", "apikey", "accesskey", "privatekey", "authkey",
         "pwd"),
        _KV_PATTERN,
        _value_group("kv-secret"),
        fold=True,
    ),
    SecretRule(
        "xml-secret",
        ("pass", "secret", "token"),
        re.compile(r"(?i)<(?P<tag>[\w:-]*(?:password|passwd|secret|token)[\w:-]*)>(?P<val>(?!\[REDACTED)[^<]+)</"),
        _value_group("xml-secret"),
        fold=True,
    ),
)
