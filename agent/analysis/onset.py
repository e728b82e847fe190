"""Onset: the rise still in progress at collection, and the earlier episodes that ended.

Works on per-minute counts of errors+warnings (the whole log, each source, and the
busiest templates each give one series). The question asked of a bundle is "what is
going wrong now, and since when?", so the onset is the start of the latest *sustained*
rise that lasts to the end of the window; a spike that ended hours before is an
episode, listed with its start and end, never the onset.

For one series ``x`` of ``n`` minutes:

1. Is the end raised? For tail lengths ``L`` of 5, 10, 20, ... minutes, the tail's
   sum is compared with the sums of every earlier window of the same length. The
   baseline is their median (daily spikes and bursts sit in the upper quantiles, so
   they do not raise it) and the spread their interquartile range, never below the
   Poisson spread: real logs are overdispersed (bursty), so a Poisson test alone would
   fire on ordinary chatter. The tail must stand ``z`` spreads and ``factor`` times
   above the baseline, and be *persistent*: each of its four quarters above the
   baseline — a single burst inside the tail is not a rise.
2. Where did it start? The last minimum of the cumulative excess
   ``sum(x - k)`` with ``k`` just above the background's mean rate (5 % of the way to
   the tail's rate): before the rise the sum drifts down, during it up, so the minimum
   is where the rate *leaves* its baseline — for a gentle ramp, its foot, not the point
   where it crosses a high threshold. When the part after that foot is a flat plateau
   followed by a step (an incident during a noisy hour, a crash loop on top of a
   background's "on" state), the start is the step: one at least five times higher,
   or twice as high where the plateau is at the series' usual level.
3. Is it unusual for this series? A burst the log has had before is its ordinary
   behaviour, not an incident: when an earlier stretch of the same length, before the
   start, was as steadily raised as the tail (its quietest quarter at least as busy as
   the tail's), the scale gives no rise. An empirical tail test against the series' own
   history: real backgrounds burst far beyond any fitted Poisson or negative binomial.

Because the baseline is taken per window length from the history, the same incident
gives the same onset whether the window is 24 h or 3 days.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.analysis.logscan import BASE_S

if TYPE_CHECKING:
    from agent.analysis.logscan import LogScan

__all__ = ["DEFAULT_PARAMS", "Episode", "OnsetParams", "Rise", "find_episodes", "find_rise", "minute_series"]

# Tail lengths in minutes: a rise shorter than 10 min is not sustained; one older than
# 5 h still shows at 320 min (the whole tail raised), and its foot is searched further back.
_SCALES = (10, 20, 40, 80, 160, 320)
_MIN_WINDOWS = 6
_TOP_SERIES = 8  # templates, the busiest of the last _RECENT_S
_RECENT_S = 6 * 3600
_STEP = 5.0  # a step this many times above a raised plateau starts the rise
_USUAL_STEP = 2.0  # ... or this many times above a plateau at the background's usual level


@dataclass(frozen=True)
class OnsetParams:
    warmup: int = 30  # minutes of history before the tail can be judged
    min_count: int = 5
    factor: float = 3.0
    z: float = 6.0
    lift: float = 0.05  # where between baseline and raised rate the start is placed


DEFAULT_PARAMS = OnsetParams()


@dataclass(frozen=True)
class Rise:
    start: int  # index of the first raised minute
    baseline: float  # per minute
    rate: float  # per minute, from the start to the end
    score: float  # spreads above the baseline at the best scale
    scale: int


@dataclass(frozen=True)
class Episode:
    start: int
    end: int  # exclusive
    count: int
    baseline: float  # per minute


def _prefix(x: Sequence[int]) -> list[int]:
    return [0, *itertools.accumulate(x)]


def _history(prefix: list[int], hi: int, length: int) -> list[int]:
    """Sums of the windows of ``length`` inside ``[0, hi)``, half-overlapping."""
    step = max(1, length // 2)
    return [prefix[i + length] - prefix[i] for i in range(hi - length, -1, -step)]


def _stats(sums: list[int], length: int) -> tuple[float, float]:
    """(baseline sum, spread) of a window length from its history sums."""
    q = statistics.quantiles(sums, n=4, method="inclusive")
    base = max(q[1], 0.5 * length / 60)  # at least one line per two hours
    spread = math.sqrt(max(base, ((q[2] - q[0]) / 1.349) ** 2, 1.0))
    return base, spread


def _floor(prefix: list[int], lo: int, length: int) -> int:
    """The quietest quarter of ``[lo, lo + length)``: how *steadily* raised the window is."""
    edges = [lo + length * k // 4 for k in range(5)]
    return min(prefix[b] - prefix[a] for a, b in itertools.pairwise(edges))


def _persistent(prefix: list[int], lo: int, hi: int, base_rate: float) -> bool:
    """Every quarter of ``[lo, hi)`` above baseline: one burst inside the tail is not a rise."""
    return _floor(prefix, lo, hi - lo) > max(1.0, 1.5 * base_rate * (hi - lo) / 4)


def _ordinary(prefix: list[int], before: int, length: int, floor: int) -> bool:
    """The series had an earlier window of ``length``, ended before ``before``, at least as steadily raised.

    An empirical tail test against the series' own history: a burst as strong as the
    ones the log has had before (and that ended) is the log's ordinary behaviour.
    """
    step = max(1, length // 4)
    return any(_floor(prefix, i, length) >= floor for i in range(before - length, -1, -step))


def _usual(prefix: list[int], before: int, length: int, total: float) -> bool:
    """``total`` lines in ``length`` minutes is usual for the series before ``before``: no busier
    than the busiest tenth of its earlier windows of that length, within counting noise."""
    sums = _history(prefix, before, length)
    if len(sums) < _MIN_WINDOWS:
        return False
    top = statistics.quantiles(sums, n=10, method="inclusive")[-1]
    return total <= top + 2.0 * math.sqrt(top)


def _best_step(prefix: list[int], start: int, n: int, ratio: float) -> tuple[float, int]:
    """The split of ``[start, n)`` with the best Poisson gain whose rate after is ``ratio`` times the rate before."""
    total = prefix[n] - prefix[start]
    best, split = 0.0, start
    for i in range(start + 5, n - 5):
        a, b = prefix[i] - prefix[start], total - (prefix[i] - prefix[start])
        ra, rb = a / (i - start), b / (n - i)
        if ra <= 0 or rb <= ratio * ra:
            continue
        gain = b * math.log(rb / ra) - (rb - ra) * (n - i)  # how much better a step at i explains the tail
        if gain > best:
            best, split = gain, i
    return best, split


def _past_plateau(prefix: list[int], start: int, n: int) -> int:
    """A sharp step on top of a milder raised plateau (an incident in a noisy hour) starts at the step.

    The best single split of ``[start, n)`` (Poisson likelihood) is taken when the part
    before it is flat (its last third no busier than its first: a gentle ramp rises
    through its first part, so its foot stays where it is) and the rate after it is
    ``_USUAL_STEP`` times the rate before where the plateau is at the series' usual
    level (the busiest tenth of its earlier stretches of a quarter of the plateau's
    length were as busy: a background's "on" state), else ``_STEP`` times.
    """
    if n - start < 20:
        return start
    for ratio in (_USUAL_STEP, _STEP):
        gain, split = _best_step(prefix, start, n, ratio)
        if split == start or gain < 10.0:
            continue
        # Flat: the last third of the part before the step no busier than its first third (by 1.25).
        third = (split - start) // 3
        first, last = prefix[start + third] - prefix[start], prefix[split] - prefix[split - third]
        if third <= 0 or last > 1.25 * max(first, 1):
            continue
        # Usual: the busiest tenth of the series' earlier stretches of a quarter of its length were as busy.
        span = max(10, (split - start) // 4)
        if ratio == _STEP or _usual(prefix, start, span, (prefix[split] - prefix[start]) * span / (split - start)):
            return split
    return start


def _foot(x: Sequence[int], prefix: list[int], length: int, mean: float, params: OnsetParams) -> int:
    """Where the rise seen at ``length`` left its baseline: the last minimum of the cumulative excess."""
    n = len(x)
    # Search back over thrice the tail (capped by the warmup) for the foot of the rise.
    lo = max(params.warmup // 2, n - 4 * length)
    rate = (prefix[n] - prefix[n - length]) / length
    k = mean + params.lift * max(rate - mean, 0.0)
    level = low = 0.0
    start = n - length
    for i in range(lo, n):
        if level <= low:
            low, start = level, i
        level += x[i] - k
    start = _past_plateau(prefix, start, n)
    # The minimum can sit on quiet minutes before the first raised one: step to the first line.
    while start < n - 1 and x[start] == 0:
        start += 1
    return start


def find_rise(x: Sequence[int], params: OnsetParams = DEFAULT_PARAMS) -> Rise | None:
    """The sustained rise lasting to the end of ``x`` (per-minute counts), or None."""
    n = len(x)
    if n < params.warmup + _SCALES[0]:
        return None
    prefix = _prefix(x)
    best: Rise | None = None
    for length in _SCALES:
        hi = n - length
        if hi < params.warmup or (hi - length) // max(1, length // 2) + 1 < _MIN_WINDOWS:
            break
        tail = prefix[n] - prefix[hi]
        sums = _history(prefix, hi, length)
        base, spread = _stats(sums, length)
        score = (tail - base) / spread
        if not (
            tail >= params.min_count
            and tail >= params.factor * base
            and score >= params.z
            and _persistent(prefix, hi, n, base / length)
            and (best is None or score > best.score)
        ):
            continue
        # The background's mean rate (bursts included, spikes above the 90th percentile not):
        # a bursty background's median is below its mean, and the start is placed against the mean.
        ordered = sorted(sums)[: max(1, math.ceil(len(sums) * 0.9))]
        mean = max(base, sum(ordered) / len(ordered)) / length
        start = _foot(x, prefix, length, mean, params)
        # Before the rise, was there already a window as steadily raised as the tail? Then this is ordinary.
        if _ordinary(prefix, start, length, _floor(prefix, hi, length)):
            continue
        raised = (prefix[n] - prefix[start]) / (n - start)
        best = Rise(start=start, baseline=base / length, rate=raised, score=score, scale=length)
    return best


def find_episodes(
    x: Sequence[int], params: OnsetParams = DEFAULT_PARAMS, *, block: int = 5, until: int | None = None
) -> list[Episode]:
    """Bursts of ``block``-minute windows well above the median, merged when a block apart."""
    n = len(x) if until is None else min(until, len(x))
    blocks = [sum(x[i : i + block]) for i in range(0, n - block + 1, block)]
    if len(blocks) < _MIN_WINDOWS:
        return []
    base, spread = _stats(blocks, block)
    hot = [b >= params.min_count and b >= params.factor * base and (b - base) / spread >= params.z for b in blocks]
    out: list[Episode] = []
    i = 0
    while i < len(blocks):
        if not hot[i]:
            i += 1
            continue
        j = i + 1
        while j < len(blocks) and (hot[j] or (j + 1 < len(blocks) and hot[j + 1])):
            j += 1
        lo, hi = i * block, j * block
        while lo < hi and x[lo] == 0:
            lo += 1
        while hi > lo and x[hi - 1] == 0:
            hi -= 1
        out.append(Episode(lo, hi, sum(x[lo:hi]), base / block))
        i = j
    return out


def minute_series(scan: LogScan, m0: int, n: int) -> dict[str, list[int]]:
    """Per-minute errors+warnings: all lines, each source, and the templates busiest lately."""
    per = 60 // BASE_S
    total = [0] * n
    for index, row in scan.buckets.items():
        slot = index // per - m0
        if 0 <= slot < n:
            total[slot] += row[0] + row[1]
    out = {"all": total}
    if len(scan.alarming_by_source) > 1:
        for src, counts in scan.alarming_by_source.items():
            out[f"source {src}"] = _dense(counts, m0, n, 1)
    recent = (m0 + n) * 60 - _RECENT_S
    lo = int(recent // BASE_S)
    ranked = sorted(((sum(c for i, c in st.buckets.items() if i >= lo), key) for key, st in scan.templates.items()),
                    reverse=True)
    for count, key in ranked[:_TOP_SERIES]:
        if count:
            out[f"template {key}"] = _dense(scan.templates[key].buckets, m0, n, per)
    return out


def _dense(counts: dict[int, int], m0: int, n: int, per: int) -> list[int]:
    row = [0] * n
    for index, c in counts.items():
        slot = index // per - m0
        if 0 <= slot < n:
            row[slot] += c
    return row
