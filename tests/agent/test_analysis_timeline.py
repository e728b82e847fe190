"""Timeline and onset: finds an injected burst in realistic logs, never fires on flat noise."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.analysis import (
    AnalysisError,
    BundleView,
    build_timeline,
    detect_onset,
    parse_interval,
    seal_outputs,
    template_of,
)
from agent.analysis.timeline import OnsetParams, choose_interval, format_duration, poisson_sf
from tests.fixtures.analysis.crafted import COLLECTED, generate_logs, healthy_snapshot


def _view(logs: dict[str, list[dict[str, object]]], offset_ms: float = 0.0) -> BundleView:
    s = healthy_snapshot()
    s.clock.collector_offset_ms = offset_ms
    s.clock.collector_offset_known = offset_ms != 0.0
    return BundleView.from_snapshot(s, [r for lines in logs.values() for r in lines])


def test_finds_injected_burst_and_says_when_in_plain_words() -> None:
    burst = COLLECTED - dt.timedelta(hours=2, minutes=5)
    tl = build_timeline(_view(generate_logs(burst_at=burst)))
    assert tl.interval_s == 300  # 24 h window → 5 min buckets
    assert tl.onset is not None
    assert tl.onset.began_at == pytest.approx(burst.timestamp(), abs=60)
    assert tl.summary.startswith("errors began 2026-11-22 14:02 UTC, 2 h 05 min before collection")
    templates = [g.template for g in tl.onset.templates[:4]]
    assert "Buffer I/O error on dev sdb1, logical block <*>, async page read" in templates
    assert all(g.example is not None and g.example.line_no for g in tl.onset.templates)
    assert set(tl.sources) == {"journal", "syslog", "kernel"}


def test_clock_offset_moves_every_event_onto_the_collector_clock() -> None:
    burst = COLLECTED - dt.timedelta(hours=3)
    plain = build_timeline(_view(generate_logs(burst_at=burst)))
    shifted = build_timeline(_view(generate_logs(burst_at=burst), offset_ms=600_000.0))
    assert plain.onset is not None and shifted.onset is not None
    assert shifted.onset.began_at - plain.onset.began_at == pytest.approx(600, abs=10)
    assert shifted.clock_offset_s == 600.0


def test_no_burst_in_steady_logs() -> None:
    tl = build_timeline(_view(generate_logs(seed=7)))
    assert tl.onset is None
    assert tl.summary.startswith("No burst in progress")


def test_a_burst_in_the_first_buckets_never_fires_warmup() -> None:
    assert detect_onset([300, 280] + [2, 3, 2, 1, 2, 3, 2, 2] * 8) is None
    counts = [2, 3, 2, 1, 2, 3, 2, 2, 3, 2] * 6 + [120, 130, 125, 118] * 5
    assert detect_onset(counts) == (60, pytest.approx(2.0, abs=0.6))


def test_a_burst_that_ended_is_an_episode_not_the_onset() -> None:
    """Old code: the first burst over the baseline was "errors began", though it ended hours before."""
    burst = COLLECTED - dt.timedelta(hours=20)
    tl = build_timeline(_view(generate_logs(burst_at=burst, burst_minutes=15)))
    assert tl.onset is None
    assert tl.summary.startswith("No burst in progress")
    assert len(tl.episodes) == 1
    assert tl.episodes[0].start == pytest.approx(burst.timestamp(), abs=60)
    assert tl.episodes[0].end == pytest.approx(burst.timestamp() + 900, abs=60)
    assert "Earlier bursts that ended: 11-21 20:07 to 20:22 UTC (" in tl.summary
    assert tl.to_dict()["episodes"][0]["start"].startswith("2026-11-21T20:07")
    outputs = seal_outputs(_view(generate_logs(burst_at=burst, burst_minutes=15)))
    assert json.loads(outputs["findings.json"])["timeline"]["episodes"][0]["end"].startswith("2026-11-21T20:2")
    assert "Earlier bursts that ended" in outputs["report.html"].decode() and "2026-11-21 20:07" in outputs[
        "report.html"].decode()


def test_the_incident_in_progress_wins_over_a_bigger_spike_before() -> None:
    spike, incident = COLLECTED - dt.timedelta(hours=20), COLLECTED - dt.timedelta(hours=1, minutes=10)
    logs = generate_logs(burst_at=spike, burst_minutes=15, burst_per_minute=200)
    now = generate_logs(burst_at=incident, burst_per_minute=10, per_minute=0.001, seed=3)
    tl = build_timeline(_view({k: logs.get(k, []) + now.get(k, []) for k in set(logs) | set(now)}))
    assert tl.onset is not None
    assert tl.onset.began_at == pytest.approx(incident.timestamp(), abs=60)
    assert [round((e.end - e.start) / 60) for e in tl.episodes] == [15]
    # Evidence in time order: the first template shown holds the incident's first line.
    firsts = [g.example.ts for g in tl.onset.templates if g.example is not None]
    assert firsts == sorted(firsts)
    assert firsts[0] is not None and firsts[0].startswith(dt.datetime.fromtimestamp(tl.onset.began_at, dt.UTC)
                                                          .strftime("%Y-%m-%dT%H:%M:%S"))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rate=st.floats(0.05, 60.0), buckets=st.integers(10, 400))
def test_flat_noise_never_fires(seed: int, rate: float, buckets: int) -> None:
    rng = random.Random(seed)
    # Poisson counts at a constant rate, by summing exponential gaps: flat noise.
    counts = []
    for _ in range(buckets):
        n, t = 0, rng.expovariate(rate)
        while t < 1.0:
            n += 1
            t += rng.expovariate(rate)
        counts.append(n)
    assert detect_onset(counts, OnsetParams()) is None


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), per_minute=st.floats(0.5, 20.0))
def test_flat_noise_logs_never_fire(seed: int, per_minute: float) -> None:
    assert build_timeline(_view(generate_logs(seed=seed, per_minute=per_minute, hours=6))).onset is None


def test_poisson_tail() -> None:
    assert poisson_sf(0, 3.0) == 1.0
    assert poisson_sf(1, 2.0) == pytest.approx(1 - 0.1353352832, rel=1e-9)
    assert poisson_sf(200, 15.0) < 1e-100


def test_interval_parsing_and_choice() -> None:
    assert [parse_interval(x) for x in ("5m", "30s", "1h", "600")] == [300, 30, 3600, 600]
    for bad in ("5x", "7s", "0s", "2d", ""):
        with pytest.raises(AnalysisError):
            parse_interval(bad)
    assert choose_interval(24 * 3600) == 300
    assert choose_interval(3600) == 60
    assert format_duration(7500) == "2 h 05 min"
    assert format_duration(45 * 60) == "45 min"


def test_requested_interval_is_used_and_buckets_are_bounded() -> None:
    view = _view(generate_logs(hours=2))
    assert build_timeline(view, 60).interval_s == 60
    with pytest.raises(AnalysisError, match="buckets"):
        build_timeline(_view(generate_logs(hours=48, per_minute=0.2)), 10)


def test_no_logs_and_untimed_logs() -> None:
    assert "No log lines" in build_timeline(BundleView.from_snapshot(healthy_snapshot())).summary
    untimed = BundleView.from_snapshot(healthy_snapshot(), [{"ts": None, "src": "x", "sev": "err", "msg": "m"}])
    tl = build_timeline(untimed)
    assert (tl.records, tl.untimed, tl.buckets) == (1, 1, ())
    assert "without a time" in tl.summary


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Connection from 10.0.0.5:443 failed after 300 ms", "Connection from 192.168.1.7:8080 failed after 12 ms"),
        (
            "request 3f2a1b9c-1234-4abc-9def-0123456789ab took 12.5s",
            "request 00000000-aaaa-4abc-9def-ffffffffffff took 3s",
        ),
        ("segfault at 7f3a2c0e1000 ip 00007f3a2c0e1000", "segfault at 0x55d0 ip deadbeef0042"),
        ("open /var/lib/docker/overlay2/3a9/merged: EIO", "open /var/lib/docker/overlay2/77/merged: EIO"),
        ("link fe80::1%eth0 down", "link fe80::a00:27ff:fe4e:66a1 down"),
    ],
)
def test_templates_group_repeats(a: str, b: str) -> None:
    assert template_of(a) == template_of(b)
    assert "<*>" in template_of(a)


def test_templates_keep_words() -> None:
    assert template_of("EXT4-fs error (device sda1): ext4_find_entry:1455: bad") == (
        "EXT4-fs error (device sda1): ext4_find_entry:<*>: bad"
    )


def test_terminal_timeline_prints_log_text_with_brackets_verbatim() -> None:
    """rich read "[error]" and "[client …]" as markup and dropped them from the tables."""
    from rich.console import Console

    from agent.analysis.report_text import print_timeline

    incident = COLLECTED - dt.timedelta(minutes=50)
    logs = generate_logs(seed=4)
    start = incident.timestamp()
    logs["apache"] = [
        {"ts": dt.datetime.fromtimestamp(start + 6 * i, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "src": "apache",
         "sev": "err", "msg": f"[error] [client 10.0.0.{i % 200}] [bold]AH01071: Got error 'Primary script unknown'",
         "n": i + 1}
        for i in range(int((COLLECTED.timestamp() - start) / 6))
    ]
    tl = build_timeline(_view(logs))
    assert tl.onset is not None and tl.onset.began_at == pytest.approx(start, abs=1)
    console = Console(record=True, width=100, color_system=None)
    print_timeline(tl, console)
    text = console.export_text()
    assert "[error] [client <*>] [bold]AH0<*>: Got error" in text
    assert "apache:1 " in text  # the incident's first line, shown first


def test_too_short_a_log_says_so_instead_of_no_burst() -> None:
    tl = build_timeline(_view(generate_logs(hours=0.3)))
    assert tl.onset is None
    assert tl.summary.startswith("Only 18 min of logs: too short to tell a rise from the baseline")


def test_near_duplicate_templates_are_one_group() -> None:
    logs = generate_logs(seed=5)
    start = (COLLECTED - dt.timedelta(minutes=45)).timestamp()
    logs["ganglia"] = [
        {"ts": dt.datetime.fromtimestamp(start + 5 * i, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "src": "ganglia",
         "sev": "warning", "msg": f"gmetad: Warning: we failed to resolve data source name {name}", "n": i + 1}
        for i, name in enumerate(["alpha", "beta", "gamma", "delta"] * 135)
    ]
    tl = build_timeline(_view(logs))
    assert tl.onset is not None
    gmetad = [g for g in tl.onset.templates if g.template.startswith("gmetad")]
    assert len(gmetad) == 1 and gmetad[0].count == 540
    assert gmetad[0].example is not None and gmetad[0].example.text.endswith("alpha")


@settings(max_examples=80, deadline=None)
@given(counts=st.lists(st.integers(0, 10_000), max_size=600))
def test_any_counts_give_a_start_inside_the_series_or_none(counts: list[int]) -> None:
    from agent.analysis.onset import find_episodes, find_rise

    rise = find_rise(counts)
    assert rise is None or (0 <= rise.start < len(counts) and rise.rate >= 0)
    for e in find_episodes(counts):
        assert 0 <= e.start <= e.end <= len(counts) and e.count == sum(counts[e.start : e.end])


def _poisson_minutes(rng: random.Random, rate: float, n: int) -> list[int]:
    """Per-minute counts of a Poisson process (exponential gaps)."""
    out = [0] * n
    if rate <= 0:
        return out
    t = rng.expovariate(rate)
    while t < n:
        out[int(t)] += 1
        t += rng.expovariate(rate)
    return out


def test_a_burst_no_stronger_than_the_series_earlier_ones_is_no_rise() -> None:
    """A background that bursts now and then, with one of its bursts at the end: ordinary, not an incident."""
    from agent.analysis.onset import find_rise

    rng = random.Random(7)
    counts = _poisson_minutes(rng, 0.05, 1440)
    for at, per_minute in ((300, 60), (700, 45), (1100, 70)):  # earlier bursts of 15 min
        for i in range(at, at + 15):
            counts[i] += per_minute
    for i in range(1425, 1440):  # the same kind of burst, lasting to the end
        counts[i] += 40
    assert find_rise(counts) is None
    for i in range(1380, 1440):  # an hour at that strength never happened before: a rise
        counts[i] = 40
    rise = find_rise(counts)
    assert rise is not None and abs(rise.start - 1380) <= 1


def test_a_step_on_the_background_usual_on_state_starts_at_the_step() -> None:
    """On/off background (0.8/min for hours, then nothing); a crash loop adding 2.5/min on top of an on-state."""
    from agent.analysis.onset import find_rise

    rng = random.Random(3)
    counts = []
    for block in range(24):  # one hour on, one hour off, ...; the last three hours on
        counts += _poisson_minutes(rng, 0.8 if block % 2 == 0 or block >= 21 else 0.0, 60)
    loop = _poisson_minutes(rng, 2.5, 60)
    for i, c in enumerate(loop):
        counts[1380 + i] += c
    rise = find_rise(counts)
    assert rise is not None
    assert abs(rise.start - 1380) <= 3, f"started {1380 - rise.start} min before the loop"
