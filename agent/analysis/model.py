"""The data analysis produces: findings and their evidence (frozen, JSON-able)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "SEVERITIES",
    "SEVERITY_RANK",
    "Evidence",
    "Finding",
    "LogEvidence",
    "Severity",
    "format_utc",
]

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")
SEVERITY_RANK: dict[str, int] = {"info": 1, "warning": 2, "critical": 3}

FactValue = str | int | float | bool | None


def format_utc(ts: float | None, *, seconds: bool = True) -> str | None:
    """RFC 3339 UTC text of an epoch time (None stays None)."""
    if ts is None:
        return None
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ" if seconds else "%Y-%m-%dT%H:%MZ")


@dataclass(frozen=True)
class Evidence:
    """A fact that supports a finding: where it is in the Snapshot and its value."""

    fact_path: str
    value: FactValue

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "fact", "fact_path": self.fact_path, "value": self.value}


@dataclass(frozen=True)
class LogEvidence:
    """A log line that supports a finding: its source, line number, time and text."""

    source: str
    line_no: int | None
    ts: str | None
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "log", "source": self.source, "line_no": self.line_no, "ts": self.ts, "text": self.text}


@dataclass(frozen=True)
class Finding:
    """One conclusion drawn from a bundle.

    ``subject`` names what it is about (a mount point, an interface, a service) so
    that two bundles' findings can be matched in a diff even when values change.
    """

    code: str
    severity: Severity
    title: str
    explanation: str
    evidence: tuple[Evidence | LogEvidence, ...] = ()
    next_step: str = ""
    subject: str = ""
    rule: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return f"{self.code}:{self.subject}" if self.subject else self.code

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "title": self.title,
            "explanation": self.explanation,
            "evidence": [e.to_dict() for e in self.evidence],
            "next_step": self.next_step,
            "subject": self.subject,
            "rule": self.rule,
        }
