"""Metric onset on generated series with known change points."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.analysis.metric_onset import find_step, metric_onsets
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
