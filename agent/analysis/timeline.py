"""Timeline: every timestamped log line on one UTC clock, counted per interval, and onset.

Times are corrected by the measured clock offset (ClockFacts.collector_offset_ms) so
that bundles from several machines line up on the collector's clock.

Onset ("when did it really start?") is the start of the rise still in progress at
collection (``agent.analysis.onset``), looked for in per-minute errors+warnings of the
whole log, of each source and of the busiest templates, each against its own baseline.
Earlier bursts that ended are *episodes*, listed with their start and end. Beside the
log onset stand the metric onsets of the flight recorder's history in the bundle
(``agent.analysis.metric_onset``: steps and sustained rises), on the same corrected clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.analysis.errors import AnalysisError
from agent.analysis.logscan import BASE_S, LogScan, TemplateStats, evidence_of
from agent.analysis.metric_onset import MetricOnset, metric_onsets, onsets_sentence
from agent.analysis.model import LogEvidence, format_utc
from agent.analysis.onset import DEFAULT_PARAMS, OnsetParams, Rise, find_episodes, find_rise, minute_series

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = [
    "Bucket",
    "Episode",
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
    """``2 h 05 min``, ``45 min``, ``3 d 4 h``, ``40 s`` (to the nearest minute from a minute up)."""
    s = round(abs(seconds))
    if s < 60:
        return f"{s} s"
    s = round(abs(seconds) / 60) * 60
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


def detect_onset(counts: Sequence[int], params: OnsetParams = DEFAULT_PARAMS) -> tuple[int, float] | None:
    """Index where the sustained rise lasting to the end of ``counts`` began, and the baseline per count."""
    rise = find_rise(counts, params)
    return None if rise is None else (rise.start, rise.baseline)


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
class Episode:
    """An earlier burst that ended: ``[start, end)`` on the corrected clock."""

    start: float
    end: float
    count: int
    baseline_per_min: float

    def to_dict(self) -> dict[str, Any]:
        return {"start": format_utc(self.start), "end": format_utc(self.end), "count": self.count,
                "baseline_per_min": round(self.baseline_per_min, 3)}


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
    templates: tuple[TemplateGroup, ...]  # in the order their first lines came
    series: str = "all"  # where the rise was clearest: "all", "source <name>" or "template"


@dataclass(frozen=True)
class Timeline:
    interval_s: int
    start: float | None
    end: float | None
    buckets: tuple[Bucket, ...]
    onset: Onset | None
    episodes: tuple[Episode, ...]
    records: int
    untimed: int
    bad_lines: int
    sources: dict[str, int]
    clock_offset_s: float
    collected_at: float | None
    summary: str
    metric_onsets: tuple[MetricOnset, ...] = ()

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
                "series": onset.series,
                "templates": [
                    {"template": t.template, "count": t.count, "example": t.example.to_dict() if t.example else None}
                    for t in onset.templates
                ],
            },
            "episodes": [e.to_dict() for e in self.episodes],
            "metric_onsets": [m.to_dict() for m in self.metric_onsets],
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


_SAME_PREFIX = 48
_KINDS = ("template", "source", "all")
_CLEAR = 0.5  # a rise at least half as clear as the clearest can place the onset


def _groups(scan: LogScan, start: float, end: float) -> tuple[TemplateGroup, ...]:
    """The dominant templates of ``[start, end)``, each shown by its first line there, in time order.

    Templates that read the same for their first ``_SAME_PREFIX`` characters (one message
    about several hosts or files) are one group: shown once, counted together.
    """
    lo, hi = int(start // BASE_S), math.ceil(end / BASE_S) + 1
    ranked = sorted(((st.count_between(lo, hi), key) for key, st in scan.templates.items()), reverse=True)
    merged: dict[str, tuple[float, TemplateGroup]] = {}
    for n, key in ranked[: 4 * TOP_TEMPLATES]:
        if not n:
            break
        stats: TemplateStats = scan.templates[key]
        kept = stats.first_from(start)
        example = evidence_of(*kept) if kept is not None else stats.example(start, end + BASE_S)
        first = kept[1] if kept is not None else end
        same = key[:_SAME_PREFIX]
        if same in merged:
            t0, g = merged[same]
            merged[same] = (first, TemplateGroup(g.template, g.count + n, example)) if first < t0 else (
                t0, TemplateGroup(g.template, g.count + n, g.example))
        elif len(merged) < TOP_TEMPLATES:
            merged[same] = (first, TemplateGroup(key, n, example))
    return tuple(g for _, g in sorted(merged.values(), key=lambda item: item[0]))


def _onset(
    scan: LogScan, buckets: list[Bucket], interval: int, collected_at: float | None, end: float,
    params: OnsetParams,
) -> tuple[Onset | None, tuple[Episode, ...]]:
    assert scan.first_ts is not None
    m0 = int(scan.first_ts // 60)
    n = int(end // 60) - m0 + 1
    series = minute_series(scan, m0, n)
    rises = [(name, rise) for name, counts in series.items() if (rise := find_rise(counts, params)) is not None]
    onset: Onset | None = None
    cut = n
    if rises:
        # Templates first, then sources, then everything: the narrower the series, the
        # quieter its baseline and the sharper its foot (the sum of everything, blurred by
        # every burst, places it loosely). Among the clear rises of the narrowest kind —
        # every one lasting to the end — the earliest foot is when the trouble began.
        kind = min(rises, key=lambda item: _KINDS.index(item[0].split(" ", 1)[0]))[0].split(" ", 1)[0]
        narrow = [item for item in rises if item[0].split(" ", 1)[0] == kind]
        top = max(rise.score for _, rise in narrow)
        clear = [item for item in narrow if item[1].score >= _CLEAR * top]
        name, rise = min(clear, key=lambda item: (item[1].start, -item[1].score))
        onset = _make_onset(scan, buckets, interval, collected_at, end, m0, name, rise)
        cut = rise.start
    total = series["all"]
    episodes = tuple(
        Episode(float((m0 + e.start) * 60), float((m0 + e.end) * 60), e.count, e.baseline)
        for e in find_episodes(total, params, until=cut)
    )
    return onset, episodes


def _make_onset(
    scan: LogScan, buckets: list[Bucket], interval: int, collected_at: float | None, end: float, m0: int,
    name: str, rise: Rise,
) -> Onset:
    start = float((m0 + rise.start) * 60)
    groups = _groups(scan, start, end)
    # The first line of the rise: the earliest of the dominant templates' first lines, when in the start minute.
    firsts = [kept[1] for g in groups if (kept := scan.templates[g.template].first_from(start)) is not None]
    began = min(firsts) if firsts and min(firsts) < start + 60 else start
    i = max(0, min(len(buckets) - 1, int((start - buckets[0].start) // interval)))
    # The baseline shown is of all errors+warnings per interval before the onset (their mean,
    # the busiest tenth of intervals left out): what a reader compares the first interval with.
    before = sorted(b.alarming for b in buckets[:i])[: math.ceil(i * 0.9)]
    shown = sum(before) / len(before) if before else rise.baseline * interval / 60
    errors = sum(b.errors for b in buckets[i:])
    warnings = sum(b.warnings for b in buckets[i:])
    return Onset(
        bucket_index=i,
        bucket_start=buckets[i].start,
        began_at=began,
        count=buckets[i].alarming,
        baseline=shown,
        kind="errors" if errors >= warnings else "warnings",
        burst_end=end,
        before_collection_s=None if collected_at is None else collected_at - began,
        templates=groups,
        series=name.split(" ", 1)[0],
    )


def _when(ts: float) -> str:
    return (format_utc(ts, seconds=False) or "").replace("T", " ").replace("Z", " UTC")


def _summary(scan: LogScan, onset: Onset | None, episodes: tuple[Episode, ...], interval: int,
             has_logs: bool, end: float | None) -> str:
    if scan.first_ts is None:
        if not has_logs:
            return "No log lines in this bundle (facts only, or no logs were collected)."
        return f"No timestamped log lines ({scan.records} lines without a time, {scan.bad_lines} unreadable)."
    earlier = ""
    if episodes:
        shown = ", ".join(
            f"{_when(e.start)[5:16]} to {_when(e.end)[11:16]} UTC ({e.count} lines)" for e in episodes[-3:]
        )
        more = f" (the last 3 of {len(episodes)})" if len(episodes) > 3 else ""
        earlier = f" Earlier bursts that ended{more}: {shown}."
    span = (end or 0.0) - scan.first_ts
    if onset is None and span < (DEFAULT_PARAMS.warmup + 10) * 60:
        return (
            f"Only {format_duration(span)} of logs: too short to tell a rise from the baseline "
            f"({scan.errors} errors, {scan.warnings} warnings in {scan.records} lines).{earlier}"
        )
    if onset is None:
        return (
            f"No burst in progress: errors and warnings are near their baseline at collection "
            f"({scan.errors} errors, {scan.warnings} warnings in {scan.records} lines).{earlier}"
        )
    text = f"{onset.kind} began {_when(onset.began_at)}"
    if onset.before_collection_s is not None:
        direction = "before" if onset.before_collection_s >= 0 else "after"
        text += f", {format_duration(onset.before_collection_s)} {direction} collection, and still going"
    return (
        f"{text} ({onset.count} errors+warnings in the first {format_duration(interval)} "
        f"against a baseline of {onset.baseline:.1f}).{earlier}"
    )


def build_timeline(
    view: BundleView, interval_s: int | None = None, params: OnsetParams = DEFAULT_PARAMS
) -> Timeline:
    """Count the view's log lines per interval (chosen from the window when not given) and find the onset."""
    scan = view.log_scan
    collected = view.collected_at
    if scan.first_ts is None or scan.last_ts is None:
        interval = interval_s or INTERVALS[1]
        start = end = None
        buckets: list[Bucket] = []
        onset = None
        episodes: tuple[Episode, ...] = ()
    else:
        # Stretch the window to the collection time, unless the logs are far older (then the tail is noise).
        recent = collected is not None and collected - scan.last_ts < 7 * 86400
        end = max(scan.last_ts, collected) if recent and collected is not None else scan.last_ts
        interval = interval_s or choose_interval(end - scan.first_ts)
        start, buckets = _grid(scan, end, interval)
        onset, episodes = _onset(scan, buckets, interval, collected, end, params)
    metric = tuple(m.shifted(scan.offset_s) for m in metric_onsets(view.snapshot.recorded_history))
    return Timeline(
        interval_s=interval,
        start=start,
        end=end,
        buckets=tuple(buckets),
        onset=onset,
        episodes=episodes,
        records=scan.records,
        untimed=scan.untimed,
        bad_lines=scan.bad_lines,
        sources=dict(scan.sources),
        clock_offset_s=scan.offset_s,
        collected_at=collected,
        summary=_summary(scan, onset, episodes, interval, view.has_logs, end) + onsets_sentence(metric),
        metric_onsets=metric,
    )
