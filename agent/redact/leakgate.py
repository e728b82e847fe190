"""The leak gate: an independent scan of what is about to be sealed.

It shares no code with the redactor on purpose — its detectors are written apart,
narrow and precise (vendor token shapes, key blocks with a body, credentials that are
not a marker), and it looks for every harvested host value as a literal, plus forms the
redactor does not rewrite (an address written with dashes, as in ``ip-10-1-2-3`` or
``dhcp-192-168-0-66``, sos#3388). It scans raw bytes in blocks with an overlap, so
memory stays bounded and no decoding can hide a value.

A hit fails closed (``LeakError`` naming artifact and rule) unless the customer said
``--allow-leaks``; either way the manifest records what was found — counts, never values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from agent.redact.errors import LeakError
from agent.redact.harvest import Harvested

__all__ = ["LeakGate", "LeakReport"]

_BLOCK = 1 << 20
_OVERLAP = 4096

# Literal hints: the combined regex runs only on lines holding one (bytes.find is memchr
# fast; an alternation of a dozen patterns over every byte is not).
_HINTS_CS = (
    b"PRIVATE KEY", b"AKIA", b"ASIA", b"ABIA", b"ACCA", b"A3T", b"gho_", b"ghp_", b"ghu_", b"ghs_", b"ghr_",
    b"github_pat_", b"glpat-", b"xox", b"k_live_", b"k_test_", b"k_prod_", b"AIza", b"eyJ", b"://",
)  # fmt: skip
_HINTS_CI = (b"accountkey=", b"authorization")
# A key block's body may follow its BEGIN line: look this far past a hint.
_REACH = 400

_DETECTORS: tuple[tuple[str, bytes], ...] = (
    ("private-key", rb"-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----[^\[]{0,300}?[A-Za-z0-9+/]{40}"),
    ("aws-access-key", rb"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16}(?![A-Z0-9])"),
    ("github-token", rb"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,})"),
    ("gitlab-token", rb"glpat-[A-Za-z0-9_-]{20}"),
    ("slack-token", rb"xox[abposr]-[0-9]{6,}-[A-Za-z0-9-]{6,}"),
    ("stripe-key", rb"(?<![A-Za-z0-9])[sr]k_(?:live|test|prod)_[A-Za-z0-9]{16,}"),
    ("gcp-api-key", rb"AIza[A-Za-z0-9_-]{35}"),
    ("jwt", rb"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    ("url-credentials", rb"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{1,30}://[^\s:/@\"'<>\[\]]*:(?!\[REDACTED)[^\s@/\"'<>\[\]]+@"),
    ("azure-key", rb"(?i)AccountKey=(?!\[REDACTED)[A-Za-z0-9+/]{40,}"),
    (
        "auth-header",
        rb"(?i)authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic)\s+(?!\[REDACTED)[A-Za-z0-9._~+/=-]{12,}",
    ),
)


@dataclass
class LeakReport:
    """What the gate found: (artifact, rule) -> count. Empty means the bundle is clean."""

    leaks: dict[tuple[str, str], int] = field(default_factory=dict)
    scanned: list[str] = field(default_factory=list)

    def add(self, artifact: str, rule: str, n: int) -> None:
        if n:
            self.leaks[(artifact, rule)] = self.leaks.get((artifact, rule), 0) + n

    def as_list(self) -> list[dict[str, object]]:
        return [{"artifact": a, "rule": r, "count": n} for (a, r), n in sorted(self.leaks.items())]


class LeakGate:
    """Scan artifacts after redaction; ``check`` raises LeakError unless leaks are allowed."""

    def __init__(self, harvested: Harvested | None, *, secrets: bool = True) -> None:
        parts: list[tuple[str, bytes]] = list(_DETECTORS) if secrets else []
        self._hints_cs: tuple[bytes, ...] = _HINTS_CS if secrets else ()
        hints_ci: list[bytes] = list(_HINTS_CI) if secrets else []
        for kind, value in (harvested.values() if harvested else ()):
            parts.extend(_harvested_patterns(kind, value))
            hints_ci.append(value.lower().encode("utf-8"))
            if kind == "ip" and "." in value:
                hints_ci.append(value.replace(".", "-").encode())
            if kind == "mac":
                hints_ci.append(value.lower().replace(":", "-").encode())
        self._hints_ci = tuple(dict.fromkeys(hints_ci))
        parts = [(name, b"(?i:" + p[4:] + b")" if p.startswith(b"(?i)") else p) for name, p in parts]
        self._rules = tuple(name for name, _ in parts)
        self._re = (
            re.compile(b"|".join(b"(?P<r%d>%s)" % (i, p) for i, (_, p) in enumerate(parts))) if parts else None
        )
        self.report = LeakReport()

    @property
    def rule_count(self) -> int:
        return len(self._rules)

    def scan_bytes(self, artifact: str, data: bytes) -> int:
        return self._scan(artifact, data, 0)

    def scan_stream(self, artifact: str, src: IO[bytes]) -> int:
        """Scan a whole stream; return the number of hits in it."""
        hits = 0
        tail = b""
        while True:
            block = src.read(_BLOCK)
            if not block:
                break
            data = tail + block
            hits += self._scan(artifact, data, len(tail))
            tail = data[-_OVERLAP:]
        if artifact not in self.report.scanned:
            self.report.scanned.append(artifact)
        return hits

    def _windows(self, data: bytes) -> list[tuple[int, int]]:
        """Merged (start, end) spans around every hint: its line, plus reach for key bodies."""
        spans: list[tuple[int, int]] = []
        for hints, text in ((self._hints_cs, data), (self._hints_ci, data.lower() if self._hints_ci else b"")):
            for h in hints:
                i = text.find(h)
                while i >= 0:
                    start = data.rfind(b"\n", 0, i) + 1
                    end = data.find(b"\n", i)
                    end = len(data) if end < 0 else end
                    spans.append((start, max(end, min(len(data), i + _REACH))))
                    i = text.find(h, end)
        spans.sort()
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def _scan(self, artifact: str, data: bytes, fresh_from: int) -> int:
        if self._re is None:
            return 0
        hits = 0
        for start, end in self._windows(data):
            for m in self._re.finditer(data, start, end):
                if m.end() <= fresh_from:
                    continue  # seen already in the previous block's overlap
                assert m.lastgroup is not None
                self.report.add(artifact, self._rules[int(m.lastgroup[1:])], 1)
                hits += 1
        return hits

    def check(self, *, allow_leaks: bool) -> dict[str, object]:
        """The manifest entry; raises LeakError on leaks unless ``allow_leaks``."""
        leaks = self.report.as_list()
        if leaks and not allow_leaks:
            first = ", ".join(f"{x['artifact']} ({x['rule']}: {x['count']})" for x in leaks[:5])
            more = f" and {len(leaks) - 5} more" if len(leaks) > 5 else ""
            raise LeakError(
                f"leak gate: redaction missed something in {first}{more}; nothing was sealed. "
                "Exclude the artifact (--exclude PATH), change the profile, or pass --allow-leaks "
                "to seal it anyway (recorded in the manifest)",
                leaks=tuple((str(x["artifact"]), str(x["rule"]), int(str(x["count"]))) for x in leaks),
            )
        return {
            "result": "leaks-allowed" if leaks else "pass",
            "rules": self.rule_count,
            "leaks": leaks,
        }


def _harvested_patterns(kind: str, value: str) -> Iterable[tuple[str, bytes]]:
    """Literal, case-insensitive, alphanumeric-bounded patterns for one harvested value."""
    raw = value.encode("utf-8")
    lit = re.escape(raw)
    if kind == "ip":
        addr = ipaddress.ip_address(value)
        yield f"harvested-{kind}", rb"(?<![0-9A-Za-z.])" + lit + rb"(?![0-9A-Za-z]|\.\d)"
        if addr.version == 4:
            dashed = re.escape(value.replace(".", "-").encode())
            yield "harvested-ip-dashed", rb"(?<![0-9])" + dashed + rb"(?![0-9])"
        return
    if kind == "mac":
        forms = {raw, raw.replace(b":", b"-")}
        for form in forms:
            yield "harvested-mac", rb"(?i)(?<![0-9A-Fa-f])" + re.escape(form) + rb"(?![0-9A-Fa-f])"
        return
    yield f"harvested-{kind}", rb"(?i:(?<![A-Za-z0-9])" + lit + rb"(?![A-Za-z0-9]))"
