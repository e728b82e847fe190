"""Timeline: every timestamped log line on one UTC clock, counted per interval, and onset.

Times are corrected by the measured clock offset (ClockFacts.collector_offset_ms) so
that bundles from several machines line up on the collector's clock.

Onset detection ("when did it really start?"): the first interval whose
errors+warnings count ``c`` is improbable under the trailing baseline. The baseline
rate ``λ`` is robust to earlier bursts — the larger of the median and the mean of the
lower 75 % of the last ``window`` intervals (at least 0.5). An interval fires when
``c >= min_count``, ``c >= factor·λ`` and ``P(X >= c | Poisson(λ)) < p_value``. The
first ``warmup`` intervals never fire: without a baseline, the first busy interval
would always look like an onset (the naive version fired at the first bucket).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.analysis.errors import AnalysisError
from agent.analysis.logscan import BASE_S, LogScan
from agent.analysis.model import LogEvidence, format_utc

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = [
    "Bucket",
    "Onset",
    "OnsetParams",
    "TemplateGroup",
    "Timeline",
    "build_timeline",
    "choose_interval",
    "detect_onset",
    "format_duration",
    "parse_interval",
    "poisson_sf",
]

INTERVALS = (60, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
TARGET_BUCKETS = 300
MAX_BUCKETS = 10_000
TOP_TEMPLATES = 5
_INTERVAL_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> int:
    """``"5m"``, ``"30s"``, ``"1h"`` or plain seconds; a multiple of 10 s up to 1 day."""
    m = _INTERVAL_RE.match(text)
    if not m:
        raise AnalysisError(f"interval must look like 30s, 5m or 1h, got {text!r}")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds < BASE_S or seconds > 86400 or seconds % BASE_S:
        raise AnalysisError(f"interval {text!r} must be a multiple of {BASE_S} s between {BASE_S} s and 1 day")
    return seconds


def choose_interval(window_s: float) -> int:
    """The finest standard interval that shows the window in at most ~300 buckets (24 h → 5 min)."""
    for interval in INTERVALS:
        if window_s / interval <= TARGET_BUCKETS:
            return interval
    return INTERVALS[-1]


def format_duration(seconds: float) -> str:
    """``2 h 05 min``, ``45 min``, ``3 d 4 h``, ``40 s``."""
    s = round(abs(seconds))
    if s < 60:
        return f"{s} s"
    minutes, hours, days = s // 60 % 60, s // 3600 % 24, s // 86400
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min"


def poisson_sf(count: int, lam: float) -> float:
    """P(X >= count) for X ~ Poisson(lam), summed in log space (no overflow)."""
    if count <= 0:
        return 1.0
    log_lam = math.log(lam)
    total = 0.0
    k = count
    while k < count + 2000:
        term = math.exp(-lam + k * log_lam - math.lgamma(k + 1))
        total += term
        if term < total * 1e-12 or (term == 0.0 and k > lam):
            break
        k += 1
    return min(total, 1.0)


@dataclass(frozen=True)
class OnsetParams:
    warmup: int = 6
    window: int = 24
    min_count: int = 5
    factor: float = 3.0
    p_value: float = 1e-9


def _baseline(trailing: Sequence[int]) -> float:
    ordered = sorted(trailing)
    lower = ordered[: max(1, math.ceil(len(ordered) * 0.75))]
    return max(statistics.median(ordered), sum(lower) / len(lower), 0.5)


def detect_onset(counts: Sequence[int], params: OnsetParams = OnsetParams()) -> tuple[int, float] | None:
    """Index of the first interval that rises well above its trailing baseline, and that baseline."""
    for i in range(params.warmup, len(counts)):
        c = counts[i]
        if c < params.min_count:
            continue
        lam = _baseline(counts[max(0, i - params.window) : i])
        if c >= params.factor * lam and poisson_sf(c, lam) < params.p_value:
            return i, lam
    return None


@dataclass(frozen=True)
class Bucket:
    start: float
    errors: int
    warnings: int
    other: int

    @property
    def alarming(self) -> int:
        return self.errors + self.warnings


@dataclass(frozen=True)
class TemplateGroup:
    template: str
    count: int
    example: LogEvidence | None


@dataclass(frozen=True)
class Onset:
    bucket_index: int
    bucket_start: float
    began_at: float
    count: int
    baseline: float
    kind: str  # "errors" or "warnings": which dominates the burst
    burst_end: float
    before_collection_s: float | None
    templates: tuple[TemplateGroup, ...]


@dataclass(frozen=True)
class Timeline:
    interval_s: int
    start: float | None
    end: float | None
    buckets: tuple[Bucket, ...]
    onset: Onset | None
    records: int
    untimed: int
    bad_lines: int
    sources: dict[str, int]
    clock_offset_s: float
    collected_at: float | None
    summary: str

    def to_dict(self) -> dict[str, Any]:
        onset = self.onset
        return {
            "interval_s": self.interval_s,
            "start": format_utc(self.start),
            "end": format_utc(self.end),
            "clock_offset_s": self.clock_offset_s,
            "collected_at": format_utc(self.collected_at),
            "records": self.records,
            "untimed": self.untimed,
            "bad_lines": self.bad_lines,
            "sources": self.sources,
            "summary": self.summary,
            "onset": None
            if onset is None
            else {
                "bucket_start": format_utc(onset.bucket_start),
                "began_at": format_utc(onset.began_at),
                "count": onset.count,
                "baseline": round(onset.baseline, 2),
                "kind": onset.kind,
                "burst_end": format_utc(onset.burst_end),
                "before_collection_s": onset.before_collection_s,
                "templates": [
                    {"template": t.template, "count": t.count, "example": t.example.to_dict() if t.example else None}
                    for t in onset.templates
                ],
            },
            "buckets": [
                {"start": format_utc(b.start), "errors": b.errors, "warnings": b.warnings, "other": b.other}
                for b in self.buckets
            ],
        }


def _grid(scan: LogScan, end: float, interval: int) -> tuple[float, list[Bucket]]:
    assert scan.first_ts is not None
    per = interval // BASE_S
    first = int(scan.first_ts // interval)
    count = int(end // interval) - first + 1
    if count > MAX_BUCKETS:
        raise AnalysisError(
            f"interval {interval} s gives {count} buckets over this window; use a larger --interval"
        )
    rows = [[0, 0, 0] for _ in range(count)]
    for index, row in scan.buckets.items():
        slot = index // per - first
        if 0 <= slot < count:
            target = rows[slot]
            target[0] += row[0]
            target[1] += row[1]
            target[2] += row[2]
    start = float(first * interval)
    return start, [Bucket(start + i * interval, *row) for i, row in enumerate(rows)]


def _onset(
    scan: LogScan, buckets: list[Bucket], interval: int, collected_at: float | None, params: OnsetParams
) -> Onset | None:
    found = detect_onset([b.alarming for b in buckets], params)
    if found is None:
        return None
    i, lam = found
    hot = max(params.min_count, params.factor * lam)
    j = i + 1
    while j < len(buckets) and buckets[j].alarming >= hot:
        j += 1
    start, end = buckets[i].start, buckets[j - 1].start + interval
    lo, hi = int(start // BASE_S), int(end // BASE_S)
    # Minute-level start: the first 10 s slice of the onset interval that is itself hot.
    per_base = lam * BASE_S / interval
    began = start
    for k in range(lo, lo + interval // BASE_S):
        row = scan.buckets.get(k)
        if row is not None and row[0] + row[1] >= max(1.0, params.factor * per_base):
            began = float(k * BASE_S)
            break
    ranked = sorted(
        ((stats.count_between(lo, hi), key) for key, stats in scan.templates.items()), reverse=True
    )
    groups = tuple(
        TemplateGroup(key, n, scan.templates[key].example(start, end)) for n, key in ranked[:TOP_TEMPLATES] if n
    )
    errors = sum(b.errors for b in buckets[i:j])
    warnings = sum(b.warnings for b in buckets[i:j])
    return Onset(
        bucket_index=i,
        bucket_start=start,
        began_at=began,
        count=buckets[i].alarming,
        baseline=lam,
        kind="errors" if errors >= warnings else "warnings",
        burst_end=end,
        before_collection_s=None if collected_at is None else collected_at - began,
        templates=groups,
    )


def _summary(scan: LogScan, onset: Onset | None, interval: int, has_logs: bool) -> str:
    if scan.first_ts is None:
        if not has_logs:
            return "No log lines in this bundle (facts only, or no logs were collected)."
        return f"No timestamped log lines ({scan.records} lines without a time, {scan.bad_lines} unreadable)."
    if onset is None:
        return (
            f"No burst: errors and warnings stayed near their baseline "
            f"({scan.errors} errors, {scan.warnings} warnings in {scan.records} lines)."
        )
    when = format_utc(onset.began_at, seconds=False) or ""
    text = f"{onset.kind} began {when.replace('T', ' ').replace('Z', ' UTC')}"
    if onset.before_collection_s is not None:
        direction = "before" if onset.before_collection_s >= 0 else "after"
        text += f", {format_duration(onset.before_collection_s)} {direction} collection"
    return (
        f"{text} ({onset.count} errors+warnings in {format_duration(interval)} "
        f"against a baseline of {onset.baseline:.1f})."
    )


def build_timeline(
    view: BundleView, interval_s: int | None = None, params: OnsetParams = OnsetParams()
) -> Timeline:
    """Count the view's log lines per interval (chosen from the window when not given) and find the onset."""
    scan = view.log_scan
    collected = view.collected_at
    if scan.first_ts is None or scan.last_ts is None:
        interval = interval_s or INTERVALS[1]
        start = end = None
        buckets: list[Bucket] = []
        onset = None
    else:
        # Stretch the window to the collection time, unless the logs are far older (then the tail is noise).
        recent = collected is not None and collected - scan.last_ts < 7 * 86400
        end = max(scan.last_ts, collected) if recent and collected is not None else scan.last_ts
        interval = interval_s or choose_interval(end - scan.first_ts)
        start, buckets = _grid(scan, end, interval)
        onset = _onset(scan, buckets, interval, collected, params)
    return Timeline(
        interval_s=interval,
        start=start,
        end=end,
        buckets=tuple(buckets),
        onset=onset,
        records=scan.records,
        untimed=scan.untimed,
        bad_lines=scan.bad_lines,
        sources=dict(scan.sources),
        clock_offset_s=scan.offset_s,
        collected_at=collected,
        summary=_summary(scan, onset, interval, view.has_logs),
    )
