"""Metric onset on generated series with known change points."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.analysis.metric_onset import find_rise, find_step, longest_run, metric_onsets
from protos import facts_pb2


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=12, max_value=400),
    frac=st.floats(min_value=0.1, max_value=0.9),
    low=st.floats(min_value=0, max_value=40),
    rise=st.floats(min_value=40, max_value=60),  # the threshold, 30, plus twice the noise
    seed=st.integers(0, 2**32 - 1),
)
def test_a_step_is_found_within_one_interval(n: int, frac: float, low: float, rise: float, seed: int) -> None:
    rng = random.Random(seed)
    k = min(max(3, int(n * frac)), n - 3)
    values = [low + rng.uniform(-5, 5) for _ in range(k)] + [low + rise + rng.uniform(-5, 5) for _ in range(n - k)]
    step = find_step(values, 30.0)
    assert step is not None
    assert abs(step[0] - k) <= 1  # one sample = one sampling interval
    assert step[2] > step[1]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(min_value=0, max_value=300), level=st.floats(0, 90), seed=st.integers(0, 2**32 - 1))
def test_noise_is_no_step(n: int, level: float, seed: int) -> None:
    rng = random.Random(seed)
    assert find_step([level + rng.uniform(-8, 8) for _ in range(n)], 30.0) is None


def test_the_onset_of_recorded_cpu_and_memory() -> None:
    h = facts_pb2.RecordedHistory()
    t0, n, k = 1_800_000_000.0, 60, 41
    h.at_unix.extend(t0 + 10 * i for i in range(n))
    h.series.add(metric="cpu.user_pct", values=[6.0] * k + [80.0] * (n - k))
    h.series.add(metric="cpu.system_pct", values=[2.0] * n)
    h.series.add(metric="mem.used_bytes", values=[1e9] * n)
    h.series.add(metric="mem.total_bytes", values=[1e10] * n)
    (onset,) = metric_onsets(h)  # memory is flat: only CPU
    assert onset.metric == "CPU busy %" and onset.at_unix == t0 + 10 * k
    assert onset.describe() == "CPU busy % rose from 8 % to 82 % "[:-1]


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(min_value=60, max_value=1500),
    frac=st.floats(min_value=0.05, max_value=0.7),
    level=st.floats(min_value=0.5, max_value=4.0),  # GiB
    fold=st.floats(min_value=3.5, max_value=12.0),
    noise=st.floats(min_value=0.0, max_value=0.01),  # of the level
    interval=st.sampled_from([10.0, 60.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_sustained_rise_is_found_within_one_interval(
    n: int, frac: float, level: float, fold: float, noise: float, interval: float, seed: int
) -> None:
    rng = random.Random(seed)
    k = max(3, int(n * frac))
    times = [1_800_000_000.0 + interval * i for i in range(n)]
    slope = level * (fold - 1) / (n - 1 - k)
    values = [level + max(0, i - k) * slope + rng.uniform(-noise, noise) * level for i in range(n)]
    if (n - 1 - k) * interval < 1800:  # under half an hour of climbing is no sustained rise
        assert find_rise(times, values) is None
        return
    rise = find_rise(times, values)
    assert rise is not None
    assert abs(rise[0] - k) <= 1, (rise[0], k)  # one sample = one sampling interval
    assert rise[2] / rise[1] == pytest.approx(fold, rel=0.05)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(min_value=0, max_value=800), level=st.floats(1, 90), seed=st.integers(0, 2**32 - 1))
def test_noise_is_no_rise(n: int, level: float, seed: int) -> None:
    rng = random.Random(seed)
    times = [10.0 * i for i in range(n)]
    assert find_rise(times, [level * (1 + rng.uniform(-0.3, 0.3)) for _ in range(n)]) is None


def _memory_history(used: list[float], step_s: float) -> facts_pb2.RecordedHistory:
    h = facts_pb2.RecordedHistory()
    h.at_unix.extend(1_800_000_000.0 + step_s * i for i in range(len(used)))
    h.series.add(metric="mem.used_bytes", values=used)
    h.series.add(metric="mem.total_bytes", values=[64 * 1024**3] * len(used))
    return h


def test_memory_tenfold_over_three_days_is_a_rise_not_a_step() -> None:
    # A week at one sample a minute: flat at 1.2 GiB for four days, then a climb to 12 GiB.
    n, k = 7 * 1440 + 1, 4 * 1440
    used = [1.2 * 1024**3 * (1 + 9 * max(0, i - k) / (n - 1 - k)) for i in range(n)]
    (onset,) = metric_onsets(_memory_history(used, 60.0))
    assert onset.kind == "rise" and onset.metric == "memory used" and onset.unit == "bytes"
    assert onset.at_unix == 1_800_000_000.0 + 60.0 * k
    assert onset.describe() == "memory used rose 10.0-fold over 3 d 0 h (from 1.2 GiB to 12.0 GiB)"
    assert onset.to_dict()["until"] and onset.to_dict()["kind"] == "rise"


def test_a_step_stays_a_step() -> None:
    n, k = 400, 250
    used = [2 * 1024**3 if i < k else 40 * 1024**3 for i in range(n)]
    (onset,) = metric_onsets(_memory_history(used, 60.0))
    assert onset.kind == "step" and onset.at_unix == 1_800_000_000.0 + 60.0 * k
    assert onset.describe() == "memory used % rose from 3 % to 62 %"


def test_the_longest_saturated_run() -> None:
    times = [100.0 + 10 * i for i in range(20)]
    values = [50.0] * 3 + [95.0] * 4 + [40.0] + [99.0] * 10 + [97.0, float("nan")]
    run = longest_run(times, values, 90.0, [10.0] * 20)
    assert run is not None and (run.start, run.end, run.peak) == (170.0, 280.0, 99.0)
    assert run.seconds == 110.0
    assert longest_run(times, values, 99.5) is None
