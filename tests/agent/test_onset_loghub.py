"""Onset on real public logs (loghub samples) with an incident injected at a known time.

A fixed few cases of ``benchmarks/bench_onset.py`` (which measures them all): the same
generator, the same product path (bundle-contract records, ``BundleView``,
``build_timeline``). The old onset named a spike that had ended hours before, or a
background burst, in every one of these. The later cases are the harness's former false
onsets: a background burst that lasts to the end of the window but is no stronger than
the source's earlier ones, and a crash loop on top of a background template's own
"on" state (whose rise, hours earlier, was named).
"""

from __future__ import annotations

import pytest

from benchmarks.bench_onset import CORPUS, make_case, run_case

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"the loghub corpus is not at {CORPUS} (see ../shared/corpus/README.md)"
)

# (dataset, shape, seed, the largest onset error allowed in minutes; None: no onset at all)
CASES = [
    ("Mac", "sharp", 0, 5.0),
    ("Zookeeper", "ramp", 0, 15.0),
    ("Thunderbird", "crashloop", 1, 5.0),
    ("Android", "daily", 0, 5.0),
    ("Spark", "noisy", 0, 5.0),
]


@pytest.mark.parametrize(("dataset", "shape", "seed", "limit"), CASES)
def test_onset_is_the_incident_in_progress(dataset: str, shape: str, seed: int, limit: float) -> None:
    case = make_case(dataset, shape, seed)
    day = run_case(case, 86400)
    assert day.truth is not None and day.onset is not None, "no onset found for the incident in progress"
    assert abs(day.onset - day.truth) <= limit * 60, f"onset {(day.onset - day.truth) / 60:+.1f} min off"


# (dataset, seed): the background alone (daily spikes, bursts to the end of the window): no onset at all.
NO_INCIDENT = [("Windows", 0), ("BGL", 1), ("Hadoop", 2), ("HealthApp", 3)]


@pytest.mark.parametrize(("dataset", "seed"), NO_INCIDENT)
def test_an_ordinary_burst_lasting_to_the_end_is_no_onset(dataset: str, seed: int) -> None:
    case = make_case(dataset, "none", seed)
    for window in (86400, 3 * 86400):
        outcome = run_case(case, window)
        assert outcome.onset is None, f"{window // 3600} h: false onset {outcome.onset}"


@pytest.mark.parametrize("seed", [1, 3])
def test_crash_loop_on_a_background_on_state_starts_at_the_loop(seed: int) -> None:
    case = make_case("Hadoop", "crashloop", seed)
    for window in (86400, 3 * 86400):
        outcome = run_case(case, window)
        assert outcome.truth is not None and outcome.onset is not None
        assert abs(outcome.onset - outcome.truth) <= 5 * 60, f"{window // 3600} h: {outcome.error_s} s off"


def test_same_onset_with_a_day_or_three_days_of_logs() -> None:
    case = make_case("OpenStack", "daily", 1)
    day, three = run_case(case, 86400), run_case(case, 3 * 86400)
    assert day.onset is not None and three.onset is not None
    assert abs(day.onset - three.onset) <= 60
    assert not three.false_onset
