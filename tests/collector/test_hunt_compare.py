"""Comparing a hunt's bundles: robust outliers per metric, findings on some hosts only."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from collector.hunt_compare import compare, metrics_of, outliers
from protos import facts_pb2


def test_one_busy_host_among_quiet_ones_stands_out() -> None:
    cpu = {f"web-{i}": 5.0 + i * 0.5 for i in range(9)} | {"web-9": 97.0}
    med, odd = outliers(cpu, 10.0)
    assert med is not None and 6.0 < med < 8.0  # the busy host barely moves the median
    assert [h for h, _, _ in odd] == ["web-9"]


def test_small_differences_and_small_fleets_are_not_news() -> None:
    assert outliers({"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.3}, 10.0)[1] == []  # under min_gap
    assert outliers({"a": 5.0, "b": 99.0}, 10.0)[1] == []  # two hosts: no median worth the name
    assert outliers({"a": 50.0, "b": 50.0, "c": 50.0}, 10.0)[1] == []  # all equal


def test_mad_of_zero_falls_back_to_the_mean_deviation() -> None:
    _, odd = outliers({"a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0, "e": 90.0}, 10.0)
    assert [h for h, _, _ in odd] == ["e"]


def test_metrics_come_from_the_facts_and_missing_sections_give_none() -> None:
    snap = facts_pb2.Snapshot()
    snap.cpu.total_percent = 40.0
    snap.cpu.logical_count = 4
    snap.cpu.load1 = 6.0
    snap.memory.total = 8 << 30
    snap.memory.percent = 71.5
    good = snap.disks.partitions.add(total=100, percent=93.0)
    snap.disks.partitions.add(total=100, percent=99.0, error="hung mount")
    assert good.percent == 93.0
    assert metrics_of(snap) == {
        "cpu_percent": 40.0,
        "load1_per_core": 1.5,
        "memory_percent": 71.5,
        "filesystem_max_percent": 93.0,
    }  # no swap configured: no swap figure rather than a 0 % that would look healthy
    assert metrics_of(facts_pb2.Snapshot()) == {}


def test_findings_on_every_host_are_the_norm_not_news() -> None:
    findings = {
        "a": [("ntp-off", "warning", "Clock not synchronised"), ("disk-full:/var", "critical", "/var is full")],
        "b": [("ntp-off", "warning", "Clock not synchronised")],
        "c": [("ntp-off", "warning", "Clock not synchronised")],
    }
    doc = compare({"a": {}, "b": {}, "c": {}}, findings)
    (uneven,) = doc["uneven_findings"]
    assert uneven == {
        "key": "disk-full:/var",
        "severity": "critical",
        "title": "/var is full",
        "hosts": ["a"],
        "absent_on": ["b", "c"],
    }
    assert [m["metric"] for m in doc["metrics"]] == [
        "cpu_percent",
        "memory_percent",
        "load1_per_core",
        "swap_percent",
        "filesystem_max_percent",
    ]


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.floats(allow_nan=True, allow_infinity=True), max_size=30))
def test_outliers_never_fail_and_only_name_given_hosts(values: dict[str, float]) -> None:
    med, odd = outliers(values, 0.0)
    assert {h for h, _, _ in odd} <= set(values)
    assert all(abs(z) > 3.5 for _, _, z in odd)
    if med is not None:
        assert med == med  # NaN never becomes the median
