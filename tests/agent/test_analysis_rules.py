"""Every built-in rule fires on crafted facts and stays quiet on a healthy machine."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.analysis import (
    ENTRY_POINT_GROUP,
    BundleView,
    Evidence,
    LogEvidence,
    Rule,
    build_rule_registry,
    exit_code_for,
    registered_rules,
    run_rules,
)
from agent.analysis.rules import BUILTIN_RULES
from protos import facts_pb2
from tests.fixtures.analysis.crafted import GIB, healthy_snapshot

Mutate = Callable[[facts_pb2.Snapshot], None]


def _view(s: facts_pb2.Snapshot, logs: list[dict[str, object]] | None = None) -> BundleView:
    return BundleView.from_snapshot(s, logs or [])


def test_healthy_baseline_has_no_findings() -> None:
    result = run_rules(_view(healthy_snapshot()))
    assert result.findings == ()
    assert result.exit_code == 0
    assert set(result.rules_run) >= {r.code for r in BUILTIN_RULES}  # plus installed plugins


def test_empty_facts_have_no_findings() -> None:
    assert run_rules(_view(facts_pb2.Snapshot())).findings == ()


def _disk_full(s: facts_pb2.Snapshot) -> None:
    s.disks.partitions[1].percent = 98.2


def _inodes_full(s: facts_pb2.Snapshot) -> None:
    s.disks.partitions[0].inodes_used = 5_600_000


def _fragmented(s: facts_pb2.Snapshot) -> None:
    f = s.fragmentation.filesystems[0]
    f.pct_files_fragmented, f.pct_bytes_in_fragmented, f.fragments_p95 = 45.0, 70.0, 80.0


def _refs_pattern(s: facts_pb2.Snapshot) -> None:
    f = s.fragmentation.filesystems[0]
    f.fstype, f.pct_files_fragmented, f.pct_bytes_in_fragmented = "ReFS", 22.0, 25.0
    s.timeseries.agent_cpu_known = True
    for x in s.timeseries.samples:
        x.cpu_system_percent, x.agent_cpu_system_percent = 48.0, 4.0  # 44% besides the agent


def _memory_pressure(s: facts_pb2.Snapshot) -> None:
    s.memory.available = s.memory.total // 25


def _swap(s: facts_pb2.Snapshot) -> None:
    s.memory.swap_percent = 80.0
    s.memory.swap_in = s.memory.swap_out = 1200 * GIB  # ~1.4 MiB/s over 20 days of uptime


def _cpu(s: facts_pb2.Snapshot) -> None:
    for x in s.timeseries.samples:
        x.cpu_percent = 99.0


def _run_queue(s: facts_pb2.Snapshot) -> None:
    s.cpu.load1 = 13.0


def _runaway_rss(s: facts_pb2.Snapshot) -> None:
    s.processes.top_rss[0].rss = 14 * GIB


def _runaway_cpu(s: facts_pb2.Snapshot) -> None:
    s.processes.top_cpu[0].cpu_percent = 199.0


def _nic(s: facts_pb2.Snapshot) -> None:
    s.network.interfaces[0].counters.errin = 150_000


def _retrans(s: facts_pb2.Snapshot) -> None:
    s.network_depth.tcp_retrans_percent = 7.5


def _dns_fail(s: facts_pb2.Snapshot) -> None:
    s.network_depth.resolve.ok = False
    s.network_depth.resolve.error = "Temporary failure in name resolution"


def _dns_slow(s: facts_pb2.Snapshot) -> None:
    s.network_depth.resolve.duration_ms = 5004.0


def _collector_down(s: facts_pb2.Snapshot) -> None:
    s.network_depth.collector.ok = False
    s.network_depth.collector.error = "connection refused"


def _clock(s: facts_pb2.Snapshot) -> None:
    s.clock.synchronized = False


def _clock_vs_collector(s: facts_pb2.Snapshot) -> None:
    s.clock.collector_offset_ms = -90_000.0


def _services(s: facts_pb2.Snapshot) -> None:
    s.services.failed.add(name="postgresql@15-main.service", state="failed", sub_state="failed", result="exit-code")


def _reboot(s: facts_pb2.Snapshot) -> None:
    s.host.uptime_seconds = 600


def _collector_status(s: facts_pb2.Snapshot) -> None:
    s.collectors.add(name="fragmentation", state=facts_pb2.CollectorStatus.TIMEOUT, error="over budget 30 s")


CASES: list[tuple[str, Mutate, str, str]] = [
    ("disk-full", _disk_full, "critical", "/var:space"),
    ("disk-full", _inodes_full, "warning", "/:inodes"),
    ("fragmentation-heavy", _fragmented, "critical", "/var"),
    ("fragmentation-kernel-load", _refs_pattern, "critical", "/var"),
    ("memory-pressure", _memory_pressure, "critical", ""),
    ("swap-activity", _swap, "critical", ""),
    ("cpu-saturation", _cpu, "critical", ""),
    ("run-queue", _run_queue, "warning", ""),
    ("process-runaway", _runaway_rss, "critical", "rss:postgres"),
    ("process-runaway", _runaway_cpu, "warning", "cpu:postgres"),
    ("nic-errors", _nic, "critical", "eth0"),
    ("tcp-retransmissions", _retrans, "critical", ""),
    ("dns-failure", _dns_fail, "critical", ""),
    ("dns-failure", _dns_slow, "warning", ""),
    ("collector-unreachable", _collector_down, "warning", ""),
    ("clock-skew", _clock, "warning", "sync"),
    ("clock-skew", _clock_vs_collector, "critical", "collector"),
    ("services-failed", _services, "warning", ""),
    ("recent-reboot", _reboot, "info", ""),
    ("collection-incomplete", _collector_status, "info", ""),
]


@pytest.mark.parametrize(
    ("code", "mutate", "severity", "subject"), CASES, ids=[f"{c[0]}-{c[1].__name__}" for c in CASES]
)
def test_rule_fires_on_crafted_facts(code: str, mutate: Mutate, severity: str, subject: str) -> None:
    s = healthy_snapshot()
    mutate(s)
    found = run_rules(_view(s)).findings
    assert [(f.code, f.severity, f.subject) for f in found] == [(code, severity, subject)]
    f = found[0]
    assert f.title and f.explanation and f.next_step
    assert f.evidence and all(isinstance(e, Evidence) for e in f.evidence)


def test_fragmentation_alone_is_not_the_refs_pattern() -> None:
    s = healthy_snapshot()
    _fragmented(s)
    assert [f.code for f in run_rules(_view(s)).findings] == ["fragmentation-heavy"]


def test_the_agents_own_kernel_cpu_is_not_the_refs_pattern() -> None:
    """A one-shot collect's kernel time is mostly the agent walking the disk (0.4 s on 2 cores)."""
    s = healthy_snapshot()
    _refs_pattern(s)
    for x in s.timeseries.samples:
        x.agent_cpu_system_percent = 40.0  # 8% besides the agent
    assert [f.code for f in run_rules(_view(s)).findings] == []


def test_kernel_cpu_the_agent_did_not_record_is_not_used() -> None:
    """Bundles of older agents: the host's kernel CPU cannot be told apart from the agent's own."""
    s = healthy_snapshot()
    _refs_pattern(s)
    s.timeseries.agent_cpu_known = False
    assert run_rules(_view(s)).findings == ()
    s.memory.percent = 96.0
    for x in s.timeseries.samples:
        x.mem_percent = 96.0
    (found,) = run_rules(_view(s)).findings
    assert (found.code, found.severity) == ("fragmentation-kernel-load", "warning")
    assert "could not be told apart" in found.explanation and "memory is 96%" in found.title


def test_the_refs_finding_says_what_it_measured() -> None:
    s = healthy_snapshot()
    _refs_pattern(s)
    (found,) = run_rules(_view(s)).findings
    assert "kernel CPU is 44% besides the agent" in found.title
    assert "44% of all CPUs for work other than this collection (48% in all, 4% of it the agent's own)" in (
        found.explanation
    )
    paths = [e.fact_path for e in found.evidence if isinstance(e, Evidence)]
    assert paths[:2] == [
        "timeseries.samples[*].cpu_system_percent (mean)",
        "timeseries.samples[*].agent_cpu_system_percent (mean)",
    ]


def test_many_fragments_per_file_count_only_with_fragmented_files() -> None:
    """A p95 of 80 fragments is large files in ideal 128 MiB extents unless files are fragmented."""
    s = healthy_snapshot()
    f = s.fragmentation.filesystems[0]
    f.fragments_p95, f.pct_files_fragmented = 80.0, 1.0
    assert run_rules(_view(s)).findings == ()
    f.pct_files_fragmented = 6.0
    assert [(x.code, x.severity) for x in run_rules(_view(s)).findings] == [("fragmentation-heavy", "warning")]


def test_high_kernel_cpu_without_fragmentation_is_not_the_refs_pattern() -> None:
    s = healthy_snapshot()
    for x in s.timeseries.samples:
        x.cpu_system_percent = 60.0
    assert run_rules(_view(s)).findings == ()


def test_oom_kill_lines_are_critical_with_log_evidence() -> None:
    logs = [
        {
            "ts": "2026-11-22T15:00:00Z",
            "src": "kernel",
            "sev": "err",
            "n": 7,
            "msg": "Out of memory: Killed process 4242 (java) total-vm:9000000kB, anon-rss:8000000kB",
        },
        {
            "ts": "2026-11-22T15:00:01Z",
            "src": "kernel",
            "sev": "info",
            "n": 8,
            "msg": "oom_reaper: reaped process 4242",
        },
    ]
    found = run_rules(_view(healthy_snapshot(), logs)).findings
    assert [(f.code, f.severity) for f in found] == [("oom-kill", "critical")]
    ev = found[0].evidence[0]
    assert isinstance(ev, LogEvidence)
    assert (ev.source, ev.line_no) == ("kernel", 7)
    assert ev.ts == "2026-11-22T15:00:00Z"  # plus the 120 ms collector offset, shown to the second


def test_thresholds_are_options() -> None:
    s = healthy_snapshot()
    result = run_rules(_view(s), overrides={"disk-full": {"warn_pct": 60.0}})
    assert [(f.code, f.subject) for f in result.findings] == [("disk-full", "/var:space")]
    with pytest.raises(ValueError, match="unknown options"):
        BUILTIN_RULES[0](no_such_option=1.0)


def test_exit_codes_follow_worst_severity() -> None:
    assert [exit_code_for(s) for s in (None, "info", "warning", "critical")] == [0, 0, 10, 20]


class _Exploding(Rule):
    code = "exploding"
    title = "Explodes"
    description = "A rule that raises."

    def evaluate(self, view: BundleView) -> Iterator[object]:  # type: ignore[override]
        raise RuntimeError("boom")


def test_a_rule_that_raises_becomes_an_info_finding() -> None:
    registry = build_rule_registry([*BUILTIN_RULES, _Exploding])
    s = healthy_snapshot()
    _disk_full(s)
    found = run_rules(_view(s), registry).findings
    assert [(f.code, f.severity, f.subject) for f in found] == [
        ("disk-full", "critical", "/var:space"),
        ("analyzer-error", "info", "exploding"),
    ]
    assert "RuntimeError: boom" in found[1].explanation


PLUGIN = """
from agent.analysis import Evidence, Rule


class TooManyProcesses(Rule):
    code = "too-many-processes"
    title = "Too many processes"
    description = "More processes than the option allows."
    options = {"max": 100}

    def evaluate(self, view):
        n = view.snapshot.processes.total
        if n > self.opt("max"):
            yield self.finding("warning", f"{n} processes", "Many.", [Evidence("processes.total", n)], "Look.")
"""


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "casefile_rule_plugin.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "casefile_rule_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: casefile_rule_plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\ntoo_many = casefile_rule_plugin:TooManyProcesses\n"
        "missing = casefile_no_such_module:Rule\nnot_a_rule = casefile_rule_plugin:Evidence\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    sys.modules.pop("casefile_rule_plugin", None)
    registered_rules(refresh=True)


def test_plugins_register_through_entry_points_and_broken_ones_are_info(plugin_path: Path) -> None:
    registry = registered_rules(refresh=True)
    assert "too-many-processes" in registry.codes()
    found = run_rules(_view(healthy_snapshot()), registry).findings
    assert [(f.code, f.subject) for f in found] == [
        ("too-many-processes", ""),
        ("analyzer-error", "missing"),
        ("analyzer-error", "not_a_rule"),
    ]
    assert "ModuleNotFoundError" in found[1].explanation


def test_the_agents_own_processes_are_not_runaways() -> None:
    s = healthy_snapshot()
    _runaway_cpu(s)
    _runaway_rss(s)
    s.processes.top_cpu[0].agent = s.processes.top_rss[0].agent = True  # the collection's own walker
    assert [f.code for f in run_rules(_view(s)).findings] == []


def test_cpu_saturation_judges_what_the_agent_left_to_the_others() -> None:
    s = healthy_snapshot()
    s.timeseries.agent_cpu_known = True
    for x in s.timeseries.samples:
        x.cpu_percent, x.agent_cpu_percent = 60.0, 45.0  # the agent's walk, the others idle-ish
    assert [f.code for f in run_rules(_view(s)).findings] == []
    for x in s.timeseries.samples:
        x.cpu_percent = 99.0  # the others took all the agent left them: saturated without it too
    (found,) = run_rules(_view(s)).findings
    assert found.code == "cpu-saturation" and found.severity == "critical"
    assert found.title == "CPU 99% busy, 45% of it this agent's collecting"
    assert "the other processes used 54%, 98% of what it left them" in found.explanation
    s.timeseries.ClearField("samples")  # known, but no sample fitted the window
    assert [f.code for f in run_rules(_view(s)).findings] == []
