"""Triggers in policy.json: parsing with ceilings, and the watch the recorder runs after each sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.daemon.policy import Policy, PolicyError, load_policy
from agent.daemon.trigger_spec import TriggerSpec
from agent.daemon.trigger_watch import TriggerWatch, failed_units, threshold_value
from agent.errors import CasefileError

FACTS = ("facts", "logs")


def _policy(triggers: object, **more: Any) -> Policy:
    return Policy.from_dict({"allowed_scopes": list(FACTS), "triggers": triggers, **more}, "test.json")


def test_a_policy_with_triggers_round_trips(tmp_path: Path) -> None:
    triggers = [
        {"name": "cpu-high", "when": "cpu", "above_pct": 90, "for_s": 600},
        {"name": "var-full", "when": "disk", "above_pct": 95, "mount": "/var/"},
        {"name": "oom", "when": "oom_kill", "scopes": ["facts", "logs"], "history_s": 7200},
    ]
    p = _policy(triggers, triggers_max_per_hour=2)
    assert [t.name for t in p.triggers] == ["cpu-high", "var-full", "oom"]
    assert p.triggers[1].mount == "/var" and p.triggers[2].scopes == ("facts", "logs")
    (tmp_path / "policy.json").write_text(json.dumps(p.to_dict()))
    assert load_policy(tmp_path) == p
    assert not Policy().triggers_on and p.triggers_on
    assert not _policy(triggers, triggers_max_per_hour=0).triggers_on  # 0: no triggered capture


@pytest.mark.parametrize(
    ("trigger", "words"),
    [
        ({"name": "x", "when": "cpu"}, "needs above_pct"),
        ({"name": "x", "when": "cpu", "above_pct": 101}, "above_pct must be an integer >= 1 and <= 100"),
        ({"name": "x", "when": "cpu", "above_pct": 50, "for_s": 10**9}, "for_s must be"),
        ({"name": "x", "when": "oom_kill", "min_interval_s": 5}, "min_interval_s must be an integer >= 60"),
        ({"name": "x", "when": "oom_kill", "above_pct": 50}, "for thresholds"),
        ({"name": "x", "when": "load", "above_pct": 50}, "when must be one of"),
        ({"name": "Bad Name", "when": "oom_kill"}, "name must be"),
        ({"name": "x", "when": "kernel_oops", "scopes": ["fragmentation"]}, "not in allowed_scopes"),
        ({"name": "x", "when": "cpu", "above_pct": 50, "mount": "/"}, "disk threshold only"),
        ({"name": "x", "when": "disk", "above_pct": 50, "mount": "var"}, "absolute path"),
        ({"name": "x", "when": "oom_kill", "colour": "red"}, "unknown field(s) colour"),
    ],
)
def test_a_bad_trigger_is_named_with_its_field(trigger: dict[str, Any], words: str) -> None:
    with pytest.raises(PolicyError) as err:
        _policy([trigger])
    assert "test.json" in str(err.value) and "triggers[0]" in str(err.value) and words in str(err.value)


def test_two_triggers_of_one_name_are_refused() -> None:
    with pytest.raises(PolicyError, match="used twice: a"):
        _policy([{"name": "a", "when": "oom_kill"}, {"name": "a", "when": "kernel_oops"}])


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
            ["name", "when", "above_pct", "for_s", "mount", "scopes", "history_s", "min_interval_s", "x"]
        ), inner, max_size=6),
        max_leaves=12,
    )
)
def test_any_triggers_value_is_taken_or_refused_clearly(value: object) -> None:
    try:
        _policy(value)
    except CasefileError as exc:
        assert str(exc).startswith("policy test.json")


def _cpu(busy: float) -> dict[str, Any]:
    return {"cpu.user_pct": busy * 0.75, "cpu.system_pct": busy * 0.25, "cpu.iowait_pct": 0.0, "cpu.steal_pct": 0.0}


def test_a_threshold_fires_once_when_held_long_enough() -> None:
    t = TriggerSpec("cpu-high", "cpu", above_pct=90, for_s=30, min_interval_s=60)
    watch = TriggerWatch((t,), max_per_hour=10)
    fired = []
    series = [20.0] * 5 + [95.0] * 2 + [20.0] + [95.0] * 10 + [10.0] * 2 + [99.0] * 10
    for i, busy in enumerate(series):
        fired += [(i, f.detail) for f in watch.observe(1000.0 + 10 * i, _cpu(busy))]
    # A blip of two samples is not held 30 s; the run from 8 fires at 11 (30 s later), once
    # although it stays high; the next episode (from 20) is past min_interval_s and fires at 23.
    assert [i for i, _ in fired] == [11, 23]
    assert fired[0][1].startswith("CPU busy 95 % >= 90 % for 30 s")


def test_the_rate_limits_hold_across_triggers_and_restarts() -> None:
    a = TriggerSpec("a", "memory", above_pct=50, min_interval_s=3600)
    b = TriggerSpec("b", "swap", above_pct=50, min_interval_s=60)
    high = {"mem.used_bytes": 9, "mem.total_bytes": 10, "swap.used_bytes": 9, "swap.total_bytes": 10}
    low = {"mem.used_bytes": 1, "mem.total_bytes": 10, "swap.used_bytes": 1, "swap.total_bytes": 10}
    watch = TriggerWatch((a, b), max_per_hour=3, past=[("a", 500.0)])  # "a" fired before a restart
    names = []
    for k in range(8):
        at = 1000.0 + 600 * k
        names += [(k, f.trigger.name) for f in watch.observe(at, high)]
        watch.observe(at + 300, low)
    # "a" waits out its hour from 500 (first at 4600, k=6); "b" (a minute apart) fires at
    # 1000 and 1600, then the cap of 3 an hour (with a's 500) holds it until the hour rolls on.
    assert names == [(0, "b"), (1, "b"), (6, "a"), (6, "b"), (7, "b")]


def test_thresholds_read_the_sample() -> None:
    m = {"fs./.used_pct": 40.0, "fs./var.used_pct": 97.5, "swap.used_bytes": 0, "swap.total_bytes": 0}
    assert threshold_value("disk", m) == (97.5, "filesystem /var used")
    assert threshold_value("disk", m, "/") == (40.0, "filesystem / used")
    assert threshold_value("swap", m) is None  # no swap: never a threshold crossed
    assert threshold_value("cpu", {}) is None  # the first sample has no rates


def _proc(root: Path, oom: int, taint: int) -> None:
    (root / "sys" / "kernel").mkdir(parents=True, exist_ok=True)
    (root / "vmstat").write_text(f"nr_free_pages 1\noom_kill {oom}\npgfault 7\n")
    (root / "sys" / "kernel" / "tainted").write_text(f"{taint}\n")


def test_oom_kills_and_oopses_fire_only_when_they_happen(tmp_path: Path) -> None:
    # What the kernel shows in /proc, written by the test: an OOM kill or an oops cannot be
    # caused on a shared machine.
    _proc(tmp_path, oom=3, taint=512)  # earlier kills and a warning taint: the baseline
    oom, oops = TriggerSpec("oom", "oom_kill", min_interval_s=60), TriggerSpec("oops", "kernel_oops")
    watch = TriggerWatch((oom, oops), max_per_hour=10, proc=str(tmp_path))
    assert watch.observe(1000.0, {}) == []
    _proc(tmp_path, oom=5, taint=512)
    (f,) = watch.observe(1010.0, {})
    assert f.trigger.name == "oom" and "ran 2 time(s)" in f.detail
    _proc(tmp_path, oom=6, taint=512 | 128)
    (g,) = watch.observe(1020.0, {})  # the second kill is within min_interval_s; the oops fires
    assert g.trigger.name == "oops" and "flag D" in g.detail
    assert watch.observe(1100.0, {}) == []


def test_a_newly_failed_unit_fires(tmp_path: Path) -> None:
    # systemctl's output as recorded on a machine with a failed unit (this one has no systemd).
    listing = tmp_path / "failed.txt"
    listing.write_text("")
    command = ("sh", "-c", f"cat {listing}")
    ticks = iter(float(t) for t in range(0, 1000, 30))
    watch = TriggerWatch(
        (TriggerSpec("unit", "unit_failed"),),
        max_per_hour=10,
        units=lambda: failed_units(command),
        monotonic=lambda: next(ticks),
    )
    assert watch.observe(1000.0, {}) == []  # baseline
    listing.write_text("● nginx.service loaded failed failed A high performance web server\n")
    assert watch.observe(1010.0, {}) == []  # 30 s: not checked again yet (every 60 s)
    (f,) = watch.observe(1020.0, {})
    assert f.detail == "unit(s) failed: nginx.service"
    assert failed_units(("sh", "-c", "exit 1")) is None  # no systemd: nothing known, nothing fired
