"""The leak gate: the redaction rules run once more over what is about to be sealed.

The gate and the redactor share one rule set and one notion of a match: the gate is a
``Redactor`` of the same rules (``pipeline.RULES``: secret rules and the high-entropy
net) whose output is thrown away and whose hit counts are the verdict. Redaction is
idempotent — a marker or a token matches no rule — so on a correctly redacted member
the gate finds nothing, and it can only fail on what no rule redacted: a pipeline
fault, a member that escaped the phase, a value cut by the redactor's line bound (the
gate reads lines four times longer). A random match that the redactor did not treat as
a secret cannot fail a bundle, because the redactor would have redacted it.

It reads members the way the redactor does — JSON lines decoded record by record,
other members as UTF-8 text line by line — plus ``report.html`` unescaped, so an HTML
entity hides nothing. In ``private`` it also looks for every value harvested from this
host (names, their dashed-address forms, addresses, MACs) as the redactor's literal
matcher does. The binary ``facts.pb`` is not scanned: ``facts.json`` holds the same
strings, decoded, and random protobuf framing bytes next to a string could form a
"match" that exists in no text.

A hit fails closed (``LeakError`` naming artifact and rule) unless the customer said
``--allow-leaks``; either way the manifest records what was found — counts, never values.
"""

from __future__ import annotations

import html
import io
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import IO

from agent.redact.errors import LeakError
from agent.redact.harvest import Harvested
from agent.redact.identifiers import IPV4_RE, IPV6_RE, IdentifierRules
from agent.redact.pipeline import MAX_LINE, RULES, Redactor
from agent.redact.profiles import get_profile
from agent.redact.pseudonym import Pseudonymizer

__all__ = ["LeakGate", "LeakReport"]

# Four times the redactor's line bound: a value its cut split is seen whole here.
_GATE_MAX_LINE = 4 * MAX_LINE
_SKIPPED = frozenset({"facts.pb"})


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


class _Checker(Redactor):
    """The redactor's rules; for identifiers only this host's harvested values."""

    def __init__(self, harvested: Harvested | None) -> None:
        pseudo = Pseudonymizer(secrets.token_bytes(32)) if harvested is not None else None
        super().__init__(
            get_profile("private" if harvested is not None else "standard"),
            harvested=harvested,
            pseudonymizer=pseudo,
            max_line=_GATE_MAX_LINE,
        )
        h = harvested or Harvested()
        macs = [("mac", form) for mac in h.macs for form in (mac, mac.replace(":", "-"))]
        self._harvest = IdentifierRules(pseudo, (*h.literals(), *macs)) if pseudo is not None else None
        self._ips = {str(ipaddress.ip_address(ip.split("%", 1)[0])) for ip in h.ips}

    def _identifiers(self, line: str, counts: dict[str, int]) -> str:
        if self._harvest is None:
            return line
        out = self._harvest.literals(line, counts, prefix="harvested-")
        for pattern in (IPV4_RE, IPV6_RE):  # the redactor's notion of an address
            for m in pattern.finditer(out):
                try:
                    addr = str(ipaddress.ip_address(m.group(0).split("%", 1)[0]))
                except ValueError:
                    continue
                if addr in self._ips:
                    counts["harvested-ip"] = counts.get("harvested-ip", 0) + 1
        return out


class LeakGate:
    """Scan artifacts after redaction; ``check`` raises LeakError unless leaks are allowed.

    ``harvested`` (the private profile) adds this host's values to the secret rules.
    """

    def __init__(self, harvested: Harvested | None) -> None:
        self._checker = _Checker(harvested)
        self.report = LeakReport()

    @property
    def rule_count(self) -> int:
        return len(RULES) + (len(self._checker.harvested.values()) if self._checker.pseudo is not None else 0)

    def scan_bytes(self, artifact: str, data: bytes) -> int:
        return self.scan_stream(artifact, io.BytesIO(data))

    def scan_stream(self, artifact: str, src: IO[bytes]) -> int:
        """Scan a whole member; return the number of hits in it."""
        if artifact in _SKIPPED:
            return 0
        if artifact.endswith(".html"):
            text = src.read().decode("utf-8", "surrogateescape")
            src = io.BytesIO(html.unescape(text).encode("utf-8", "surrogateescape"))
        self._checker.forget(artifact)
        self._checker.redact_stream(src, _Null(), artifact)
        hits = self._checker.artifact_hits(artifact)
        self._checker.forget(artifact)
        for rule, n in hits.items():
            self.report.add(artifact, rule, n)
        if artifact not in self.report.scanned:
            self.report.scanned.append(artifact)
        return sum(hits.values())

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


class _Null(io.BytesIO):
    """A sink: the gate wants the counts, not the text."""

    def write(self, b: bytes, /) -> int:  # type: ignore[override]
        return len(b)
