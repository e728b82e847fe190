"""Metric onset: when a recorded series changed ("CPU rose from 8 % to 85 % at 14:05",
"memory used rose x10 over 3 d").

Two shapes, each fitted by least squares over prefix sums in O(n):

- a **step** (``find_step``): the sample index that best divides the series into two
  levels, with at least ``MIN_SIDE`` samples on each side so one spike is not a step;
  reported when the two means differ by the series' threshold (30 points of CPU, 20 of
  memory or swap);
- a **sustained rise** (``find_rise``): a level, then a straight climb lasting to the end
  of the window (a hinge), reported when the end is at least ``RISE_RATIO`` times the
  level, the climb lasts ``RISE_MIN_S`` and ``RISE_MIN_POINTS`` samples, and the hinge
  explains the series (R² ≥ ``RISE_MIN_R2``). A step is a steep rise of no length: when
  both fit, the one leaving less unexplained is kept.

The onset's time is the first sample after the change (a step) or the hinge's sample (a
rise): its error is at most one sampling interval on a clean change. ``saturated_runs``
gives the longest stretch at or above a level (sustained saturation for the rules).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from agent.analysis.model import format_utc
from protos import facts_pb2

__all__ = [
    "MIN_SIDE",
    "RISE_RATIO",
    "MetricOnset",
    "Run",
    "find_rise",
    "find_step",
    "longest_run",
    "metric_onsets",
    "onsets_sentence",
    "recorded_series",
]

MIN_SIDE = 3
RISE_RATIO = 3.0
RISE_MIN_S = 1800.0
RISE_MIN_POINTS = 10
RISE_MIN_R2 = 0.8


def _span(seconds: float) -> str:
    """3 d 4 h (to the nearest hour from a day up), 2 h 05 min, 40 min."""
    s = round(seconds / 3600) * 3600 if seconds >= 86400 else round(seconds / 60) * 60
    days, hours, minutes = s // 86400, s // 3600 % 24, s // 60 % 60
    return f"{days} d {hours} h" if days else f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _amount(value: float, unit: str) -> str:
    return f"{value / 1024**3:.1f} GiB" if unit == "bytes" else f"{value:.0f} %"


@dataclass(frozen=True)
class MetricOnset:
    metric: str  # "CPU busy %", "memory used %", "memory used"
    at_unix: float
    before: float  # the level before the change
    after: float  # the level after it (a step) or at the end of the rise
    kind: str = "step"  # "step" or "rise"
    unit: str = "%"  # "%" or "bytes"
    until_unix: float = 0.0  # a rise: the last sample

    def describe(self) -> str:
        verb = "rose" if self.after > self.before else "fell"
        if self.kind == "rise":
            ratio = self.after / self.before if self.before > 0 else math.inf
            return (
                f"{self.metric} {verb} {ratio:.1f}-fold over {_span(self.until_unix - self.at_unix)} "
                f"(from {_amount(self.before, self.unit)} to {_amount(self.after, self.unit)})"
            )
        return f"{self.metric} {verb} from {_amount(self.before, self.unit)} to {_amount(self.after, self.unit)}"

    def shifted(self, offset_s: float) -> MetricOnset:
        """On the corrected clock of the logs (the measured offset to the collector)."""
        until = self.until_unix + offset_s if self.until_unix else 0.0
        return replace(self, at_unix=self.at_unix + offset_s, until_unix=until)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "kind": self.kind,
            "at": format_utc(self.at_unix),
            "until": format_utc(self.until_unix) if self.kind == "rise" else None,
            "before": round(self.before, 2),
            "after": round(self.after, 2),
            "unit": self.unit,
            "text": self.describe(),
        }


def _step_fit(values: Sequence[float]) -> tuple[int, float, float, float] | None:
    """(index, mean before, mean after, residual sum of squares) of the best split."""
    n = len(values)
    if n < 2 * MIN_SIDE:
        return None
    prefix, squares = [0.0], 0.0
    for v in values:
        prefix.append(prefix[-1] + v)
        squares += v * v
    # The split that explains most of the variance (least squares: i·(n-i)/n · gap²);
    # the largest gap alone would favour a split near either end.
    best: tuple[float, int] | None = None
    for i in range(MIN_SIDE, n - MIN_SIDE + 1):
        gap = (prefix[n] - prefix[i]) / (n - i) - prefix[i] / i
        score = i * (n - i) / n * gap * gap
        if best is None or score > best[0]:
            best = (score, i)
    if best is None:
        return None
    i = best[1]
    sse = squares - prefix[n] ** 2 / n - best[0]
    return i, prefix[i] / i, (prefix[n] - prefix[i]) / (n - i), max(0.0, sse)


def find_step(values: Sequence[float], threshold: float) -> tuple[int, float, float] | None:
    """(index of the first sample after the step, mean before, mean after), or None."""
    fit = _step_fit(values)
    if fit is None or abs(fit[2] - fit[1]) < threshold:
        return None
    return fit[0], fit[1], fit[2]


def _hinge_fit(times: Sequence[float], values: Sequence[float]) -> tuple[int, float, float, float, float] | None:
    """(hinge index k, level a, slope b, residual SS, total SS) of y = a + b·max(0, t - t_k)."""
    n = len(values)
    if n < MIN_SIDE + RISE_MIN_POINTS:
        return None
    t0 = times[0]
    t = [x - t0 for x in times]  # relative: squares of unix times lose the seconds
    sy = sum(values)
    syy = sum(v * v for v in values)
    sst = syy - sy * sy / n
    # Suffix sums over i >= k of t, t², y, t·y.
    st = [0.0] * (n + 1)
    stt = [0.0] * (n + 1)
    sty = [0.0] * (n + 1)
    sy_k = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        st[i] = st[i + 1] + t[i]
        stt[i] = stt[i + 1] + t[i] * t[i]
        sy_k[i] = sy_k[i + 1] + values[i]
        sty[i] = sty[i + 1] + t[i] * values[i]
    best: tuple[float, int, float, float] | None = None
    for k in range(MIN_SIDE, n - RISE_MIN_POINTS + 1):
        m, tk = n - k, t[k]
        sx = st[k] - m * tk
        sxx = stt[k] - 2 * tk * st[k] + m * tk * tk
        sxy = sty[k] - tk * sy_k[k]
        det = n * sxx - sx * sx
        if det <= 0:
            continue
        b = (n * sxy - sx * sy) / det
        if b <= 0:
            continue
        a = (sy - b * sx) / n
        sse = syy - a * sy - b * sxy
        if best is None or sse < best[0]:
            best = (sse, k, a, b)
    if best is None:
        return None
    sse, k, a, b = best
    return k, a, b, max(0.0, sse), sst


def find_rise(
    times: Sequence[float], values: Sequence[float], *, ratio: float = RISE_RATIO, floor: float = 0.0
) -> tuple[int, float, float] | None:
    """(index where a sustained rise to the end began, level before, value at the end), or None.

    ``floor`` is the smallest level a ratio is taken against (1 % of CPU: from 0.1 % to
    2 % is no x20)."""
    fit = _hinge_fit(times, values)
    if fit is None:
        return None
    k, a, b, sse, sst = fit
    end = a + b * (times[-1] - times[k])
    if sst <= 0 or 1 - sse / sst < RISE_MIN_R2 or times[-1] - times[k] < RISE_MIN_S:
        return None
    level = max(a, floor)
    if level <= 0 or end < ratio * level:
        return None
    return k, a, end


@dataclass(frozen=True)
class Run:
    start: float
    end: float  # the last sample's time plus its resolution
    peak: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def longest_run(
    times: Sequence[float], values: Sequence[float], level: float, resolution: Sequence[float] = ()
) -> Run | None:
    """The longest stretch of consecutive samples at or above ``level``; each sample stands
    for the ``resolution`` before it (10 s, then 60 s)."""
    best: Run | None = None
    start: float | None = None
    peak = -math.inf
    for i, (at, v) in enumerate(zip(times, values, strict=True)):
        res = resolution[i] if i < len(resolution) else 0.0
        if v >= level and not math.isnan(v):
            if start is None:
                start, peak = at - res, v
            peak = max(peak, v)
            run = Run(start, at, peak)
            if best is None or run.seconds > best.seconds:
                best = run
        else:
            start = None
    return best


def _col(h: facts_pb2.RecordedHistory, metric: str) -> list[float] | None:
    for s in h.series:
        if s.metric == metric:
            return list(s.values)
    return None


def recorded_series(h: facts_pb2.RecordedHistory, name: str) -> list[tuple[float, float]]:
    """(time, value) of a derived series: "cpu" (busy %), "memory" / "swap" (used %),
    "memory_bytes" / "swap_bytes" (used); samples missing a value are left out."""
    t = list(h.at_unix)
    if name == "cpu":
        cols = [_col(h, f"cpu.{m}_pct") for m in ("user", "system", "iowait", "steal")]
        parts = [c for c in cols if c is not None and len(c) == len(t)]
        if not parts:
            return []
        busy = [(t[i], sum(c[i] for c in parts)) for i in range(len(t))]
        return [p for p in busy if not math.isnan(p[1])]
    key = "mem" if name.startswith("memory") else "swap"
    used, total = _col(h, f"{key}.used_bytes"), _col(h, f"{key}.total_bytes")
    if not used or not total or not len(used) == len(total) == len(t):
        return []
    ok = [i for i in range(len(t)) if total[i] > 0 and not math.isnan(used[i])]
    if name.endswith("_bytes"):
        return [(t[i], used[i]) for i in ok]
    return [(t[i], 100.0 * used[i] / total[i]) for i in ok]


def metric_onsets(h: facts_pb2.RecordedHistory) -> list[MetricOnset]:
    """Steps in recorded CPU, memory and swap, and sustained rises of CPU and of memory and
    swap used (in bytes: x10 of a small use is news even when it is 5 % of the machine)."""
    found: list[MetricOnset] = []
    for name, label, step_at, rise_name, unit, floor in (
        ("cpu", "CPU busy %", 30.0, "cpu", "%", 1.0),
        ("memory", "memory used %", 20.0, "memory_bytes", "bytes", 0.0),
        ("swap", "swap used %", 20.0, "swap_bytes", "bytes", 64 * 1024**2),
    ):
        points = recorded_series(h, name)
        step = find_step([v for _, v in points], step_at)
        rising = recorded_series(h, rise_name)
        times, values = [p[0] for p in rising], [p[1] for p in rising]
        rise = find_rise(times, values, floor=floor)
        if rise is not None:
            # The rise stands unless a step explains the same series better.
            hinge, split = _hinge_fit(times, values), _step_fit(values)
            if step is None or hinge is None or split is None or hinge[3] <= split[3]:
                k, before, after = rise
                metric = label if unit == "%" else label.removesuffix(" %")
                found.append(MetricOnset(metric, times[k], before, after, "rise", unit, times[-1]))
                continue
        if step is not None:
            found.append(MetricOnset(label, points[step[0]][0], step[1], step[2]))
    return found


def onsets_sentence(onsets: Sequence[MetricOnset]) -> str:
    """The timeline summary's sentence on them, e.g. ``Recorded metrics: CPU busy % rose from
    8 % to 85 % at 2024-12-03 14:05 UTC.`` with a leading space; "" when there are none."""
    if not onsets:
        return ""
    parts = [f"{o.describe()} {'from' if o.kind == 'rise' else 'at'} {_when(o.at_unix)}" for o in onsets]
    return " Recorded metrics: " + "; ".join(parts) + "."


def _when(ts: float) -> str:
    return (format_utc(ts, seconds=False) or "").replace("T", " ").replace("Z", " UTC")

