"""One streaming pass over a bundle's log records, shared by the timeline and the rules.

Everything is bounded: counts live in fixed-resolution buckets (``BASE_S``), templates
are capped (``MAX_TEMPLATES``; the rest count as one "other" group), and evidence lists
are capped. Only error and warning lines are templated, through a digit-insensitive
cache, so a million-line log costs about one JSON parse per line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.analysis.model import LogEvidence, format_utc
from agent.analysis.templates import TemplateCache

if TYPE_CHECKING:
    from agent.analysis.view import BundleView, LogRecord

__all__ = ["BASE_S", "ERROR_SEVERITIES", "MAX_TEMPLATES", "LogScan", "TemplateStats", "scan_logs"]

BASE_S = 10
# First line of each minute per template, so that evidence can start at an onset found
# after the pass; capped per template and in all (a million distinct minutes cost only recall).
MAX_MINUTES_PER_TEMPLATE = 1024
MAX_MINUTES = 200_000
_PER_MINUTE = 60 // BASE_S
ERROR_SEVERITIES = frozenset({"emerg", "alert", "crit", "err"})
MAX_TEMPLATES = 20_000
MAX_OOM_EVIDENCE = 20
OTHER_TEMPLATE = "(other messages)"
# The kernel's line for each kill ("Killed process" since 5.x, "Kill process" before).
_OOM_MARKER = "Out of memory: Kill"
_MAX_TEXT = 500


def evidence_of(rec: LogRecord, ts: float | None) -> LogEvidence:
    return LogEvidence(source=rec.src, line_no=rec.n, ts=format_utc(ts), text=rec.msg[:_MAX_TEXT])


@dataclass
class TemplateStats:
    """One message template: total errors+warnings, per-base-bucket counts, examples.

    The first and latest records are kept raw (evidence is built only when shown).
    """

    template: str
    errors: int = 0
    warnings: int = 0
    buckets: Counter[int] = field(default_factory=Counter)
    first: tuple[LogRecord, float] | None = None
    last: tuple[LogRecord, float] | None = None
    minutes: dict[int, tuple[LogRecord, float]] = field(default_factory=dict)

    def count_between(self, lo: int, hi: int) -> int:
        """Errors+warnings in base buckets ``lo <= index < hi``."""
        return sum(c for i, c in self.buckets.items() if lo <= i < hi)

    def example(self, lo_ts: float | None = None, hi_ts: float | None = None) -> LogEvidence | None:
        """A line of this template, inside ``[lo_ts, hi_ts)`` when one of those kept is."""
        for kept in (self.first, self.last):
            if kept is not None and (lo_ts is None or lo_ts <= kept[1]) and (hi_ts is None or kept[1] < hi_ts):
                return evidence_of(*kept)
        return evidence_of(*self.first) if self.first is not None else None

    def first_from(self, ts: float) -> tuple[LogRecord, float] | None:
        """The first kept line at or after ``ts`` (the first of each minute is kept)."""
        found: tuple[LogRecord, float] | None = None
        for minute, kept in self.minutes.items():
            if minute >= ts // 60 and kept[1] >= ts and (found is None or kept[1] < found[1]):
                found = kept
        return found


@dataclass
class LogScan:
    """What one pass learnt. Times are epoch seconds on the corrected (collector) clock."""

    offset_s: float = 0.0
    records: int = 0
    untimed: int = 0
    bad_lines: int = 0
    # base bucket index (ts // BASE_S) -> [errors, warnings, other]
    buckets: dict[int, list[int]] = field(default_factory=dict)
    sources: Counter[str] = field(default_factory=Counter)
    severities: Counter[str] = field(default_factory=Counter)
    first_ts: float | None = None
    last_ts: float | None = None
    templates: dict[str, TemplateStats] = field(default_factory=dict)
    # source -> minute index (ts // 60) -> errors+warnings: per-source baselines for the onset
    alarming_by_source: dict[str, dict[int, int]] = field(default_factory=dict)
    oom_kills: int = 0
    oom_evidence: list[LogEvidence] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(v for k, v in self.severities.items() if k in ERROR_SEVERITIES)

    @property
    def warnings(self) -> int:
        return self.severities.get("warning", 0)


def scan_logs(view: BundleView) -> LogScan:
    """Read every record of ``view`` once."""
    scan = LogScan(offset_s=view.clock_offset_s)
    offset = scan.offset_s
    buckets = scan.buckets
    templates = scan.templates
    template = TemplateCache()
    sources = scan.sources
    severities = scan.severities
    by_source = scan.alarming_by_source
    first = last = None
    records = untimed = kept_minutes = 0
    for rec in view.iter_logs():
        records += 1
        sources[rec.src] += 1
        sev = rec.sev
        severities[sev or "none"] += 1
        ts = rec.ts
        if ts is None:
            untimed += 1
        else:
            ts += offset
            if first is None or ts < first:
                first = ts
            if last is None or ts > last:
                last = ts
            index = int(ts // BASE_S)
            row = buckets.get(index)
            if row is None:
                row = buckets[index] = [0, 0, 0]
            kind = 0 if sev in ERROR_SEVERITIES else 1 if sev == "warning" else 2
            row[kind] += 1
            if kind < 2:
                key = template(rec.msg)
                stats = templates.get(key)
                if stats is None:
                    if len(templates) >= MAX_TEMPLATES:
                        key = OTHER_TEMPLATE
                        stats = templates.get(key)
                    if stats is None:
                        stats = templates[key] = TemplateStats(key)
                if kind == 0:
                    stats.errors += 1
                else:
                    stats.warnings += 1
                stats.buckets[index] += 1
                if stats.first is None:
                    stats.first = (rec, ts)
                stats.last = (rec, ts)
                minute = index // _PER_MINUTE
                per = by_source.get(rec.src)
                if per is None:
                    per = by_source[rec.src] = {}
                per[minute] = per.get(minute, 0) + 1  # a dict: Counter's += on a new key calls Python code
                minutes = stats.minutes
                kept = minutes.get(minute)
                if kept is None and kept_minutes < MAX_MINUTES:
                    if len(minutes) >= MAX_MINUTES_PER_TEMPLATE:
                        del minutes[next(iter(minutes))]
                    else:
                        kept_minutes += 1
                    minutes[minute] = (rec, ts)
                elif kept is not None and ts < kept[1]:
                    minutes[minute] = (rec, ts)
        if _OOM_MARKER in rec.msg:
            scan.oom_kills += 1
            if len(scan.oom_evidence) < MAX_OOM_EVIDENCE:
                scan.oom_evidence.append(evidence_of(rec, ts))
    scan.records, scan.untimed = records, untimed
    scan.first_ts, scan.last_ts = first, last
    scan.bad_lines = view.bad_lines
    return scan
