"""Metric onset: the step change in a recorded series ("CPU rose from 8 % to 85 % at 14:05").

One split per series: the sample index that best divides it into two levels (least
squares over prefix sums, O(n)), with at least ``MIN_SIDE`` samples on each side so one spike is
not a step. It is reported when the two means differ by at least the series' threshold: 30 points
of CPU, 20 points of memory. The onset's time is the first sample after the change, so
its error is at most one sampling interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from protos import facts_pb2

__all__ = ["MIN_SIDE", "MetricOnset", "find_step", "metric_onsets"]

MIN_SIDE = 3


@dataclass(frozen=True)
class MetricOnset:
    metric: str  # "CPU busy %" or "memory used %"
    at_unix: float
    before: float  # mean before the change
    after: float  # mean after it

    def describe(self) -> str:
        verb = "rose" if self.after > self.before else "fell"
        return f"{self.metric} {verb} from {self.before:.0f} % to {self.after:.0f} %"


def find_step(values: Sequence[float], threshold: float) -> tuple[int, float, float] | None:
    """(index of the first sample after the step, mean before, mean after), or None."""
    n = len(values)
    if n < 2 * MIN_SIDE:
        return None
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
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
    before, after = prefix[i] / i, (prefix[n] - prefix[i]) / (n - i)
    return (i, before, after) if abs(after - before) >= threshold else None


def _col(h: facts_pb2.RecordedHistory, metric: str) -> list[float] | None:
    for s in h.series:
        if s.metric == metric:
            return list(s.values)
    return None


def metric_onsets(h: facts_pb2.RecordedHistory) -> list[MetricOnset]:
    """Step changes in the recorded CPU and memory; samples missing a value are left out."""
    t = list(h.at_unix)
    found: list[MetricOnset] = []
    cols = [_col(h, m) for m in ("cpu.user_pct", "cpu.system_pct", "cpu.iowait_pct", "cpu.steal_pct")]
    parts = [c for c in cols if c is not None and len(c) == len(t)]
    if parts:
        busy = [(t[i], sum(c[i] for c in parts)) for i in range(len(t))]
        found += _onset("CPU busy %", [p for p in busy if not math.isnan(p[1])], 30.0)
    used, total = _col(h, "mem.used_bytes"), _col(h, "mem.total_bytes")
    if used and total and len(used) == len(total) == len(t):
        mem = [(t[i], 100.0 * used[i] / total[i]) for i in range(len(t)) if total[i] > 0 and not math.isnan(used[i])]
        found += _onset("memory used %", mem, 20.0)
    return found


def _onset(metric: str, points: list[tuple[float, float]], threshold: float) -> list[MetricOnset]:
    step = find_step([v for _, v in points], threshold)
    if step is None:
        return []
    i, before, after = step
    return [MetricOnset(metric, points[i][0], before, after)]
