r"""Where in a block of bytes a line may hold a secret: one pass for every rule's hints.

Every secret rule names cheap literal *hints* (gitleaks calls them keywords); a line
that holds none of them cannot match the rule. The pipeline reads 1 MiB blocks and
decodes only the lines this module points at; all other bytes are copied unchanged.

The search is one Aho-Corasick pass per haystack (``ahocorasick_rs``, Rust): case-
sensitive hints over the raw block, case-insensitive hints and the high-entropy net's
key words over its lower-cased copy. Its cost hardly depends on how many hints there
are (measured 3.7 ms per MiB for 81 hints, against 46 ms for one ``bytes.find`` loop
per hint), so a vendor family with a distinctive prefix gets its own hint and is
caught bare.

The hints of a JSON-lines record are searched in its escaped bytes. That is a superset
of the hints in its decoded text because JSON escaping (RFC 8259 §7) changes only ``"``
(to ``\"``, which still holds the ``"``), ``\`` and control characters (no hint holds
either) — except the two escapes that may stand for any character: ``\uXXXX`` and
``\/``. A record holding either is always decoded (``JSON_HINTS``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from typing import IO

from ahocorasick_rs import AhoCorasick, BytesAhoCorasick

from agent.redact.entropy import NET_FOLLOW, NET_WORDS
from agent.redact.secrets import SECRET_RULES, SecretRule

__all__ = ["JSON_HINTS", "Chain", "RuleHints", "hint_positions"]

JSON_HINTS = (b"\\u", b"\\/")


def _distinct(hints: Iterable[str]) -> list[bytes]:
    return sorted({h.encode() for h in hints})


_CS = _distinct(h for r in SECRET_RULES if not r.fold for h in r.hints)
# "data:" and "secret" (a rule's hint already): where a YAML Kubernetes Secret may begin
# (yamlsecret.py follows it from there).
_CI = _distinct([*(h for r in SECRET_RULES if r.fold for h in r.hints), "data:"])
_NET = [w.encode() for w in NET_WORDS]
_AC_CS = BytesAhoCorasick(_CS)
_AC_CS_JSON = BytesAhoCorasick([*_CS, *JSON_HINTS])
# Overlapping search here: a net word ("key") whose follow check fails must not hide a
# plain hint ("apikey") that ends at the same place.
_AC_LOW = BytesAhoCorasick([*_CI, *_NET])
_N_CI = len(_CI)


# A line shaped host:port:db:user:… (a .pgpass entry has no literal to key on): a loose
# superset of secrets.shapes.PGPASS_LINE, searched from each line start ("\n" is the
# regex's literal prefix, so the search skips to newlines in C; ~2 ms per MiB).
_F = rb"(?:[^:\s\\]|\\.)+"
_PGPASS_SHAPE = rb"[ \t]*(?:[^:\s#\\]|\\.)(?:[^:\s\\]|\\.)*:(?:\d{1,5}|\*):" + _F + b":" + _F + b":"
_PGPASS_FIRST = re.compile(_PGPASS_SHAPE)
_PGPASS_NEXT = re.compile(b"\n" + _PGPASS_SHAPE)
# The same as a JSON string value (``"msg":"host:port:…``; the writer's separators are
# ``,`` and ``:``), where a field's escaped colon is written ``\\:``. Fields unrolled and
# possessive, so nothing backtracks (~5 ms per MiB).
_J = rb'[^\s:"\\]*+(?:(?:\\\\:|\\.)[^\s:"\\]*+)*+'
_PGPASS_JSON = re.compile(rb'": ?"(?: |\\t)*+' + _J + rb":(?:\d{1,5}|\*):" + _J + b":" + _J + b":")


def hint_positions(data: bytes, jsonl: bool = False) -> list[int]:
    """Start offsets of hints in ``data``, sorted: at least one in every line holding one.

    A net word counts only where key characters and a separator follow it (``key=``,
    ``session_id":``), so "publickey for" or "Started Session 3" cost a lookup, not a line.
    """
    found = [s for _, s, _ in (_AC_CS_JSON if jsonl else _AC_CS).find_matches_as_indexes(data)]
    lower = data.lower()
    follow = NET_FOLLOW.match
    for i, s, e in _AC_LOW.find_matches_as_indexes(lower, overlapping=True):
        if i < _N_CI or follow(lower, e) is not None:
            found.append(s)
    if jsonl:
        found.extend(m.start() for m in _PGPASS_JSON.finditer(data))
    else:
        if _PGPASS_FIRST.match(data) is not None:
            found.append(0)
        found.extend(m.start() + 1 for m in _PGPASS_NEXT.finditer(data))
    found.sort()
    return found


class RuleHints:
    """Which rules a decoded line wakes: one pass over the line for every rule's hints,
    instead of an ``in`` test per hint per rule (a line that holds one hint used to pay
    ~150 of them). A rule with a ``wanted`` of its own is asked directly."""

    def __init__(self, rules: tuple[SecretRule, ...]) -> None:
        self.own = frozenset(i for i, r in enumerate(rules) if type(r).wanted is not SecretRule.wanted)
        by_hint: tuple[dict[str, set[int]], dict[str, set[int]]] = ({}, {})
        for i, r in enumerate(rules):
            for h in r.hints:
                by_hint[r.fold].setdefault(h, set()).add(i)
        self._cs, self._ci = (AhoCorasick(list(d)) if d else None for d in by_hint)
        self._cs_rules, self._ci_rules = ([frozenset(v) for v in d.values()] for d in by_hint)

    def woken(self, line: str, lower: str) -> set[int]:
        found: set[int] = set()
        for ac, rules, text in ((self._cs, self._cs_rules, line), (self._ci, self._ci_rules, lower)):
            if ac is not None:
                for i, _, _ in ac.find_matches_as_indexes(text, overlapping=True):
                    found |= rules[i]
        return found


class Chain(io.RawIOBase):
    """Bytes already read, then the rest of the stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                out, self._head = self._head, b""
            else:
                out, self._head = self._head[:size], self._head[size:]
            return out
        return self._rest.read(size)
