"""Diff: each section on bundles built from a real collection of this machine.

One real default-scope collection is made per module; each test derives a second
bundle from its facts by changing what a section is about (a filesystem filling, a new
process, a collector skipped), signs both with the real writer and compares them
through the real reader. The end-to-end checks with two real collections (a CPU hog
started between them, an unchanged machine) are in tests/e2e/test_diff_real.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agent.analysis import BundleView, DifferentHostsError, diff_bundles, render_diff_text
from agent.analysis.diff import Change, DiffResult
from agent.cli import app
from agent.collect import CollectionSpec
from agent.keys import SigningKey
from agent.oneshot import collect_bundle
from protos import facts_pb2
from tests.fixtures.analysis.crafted import GIB, healthy_snapshot, write_bundle

KEY = SigningKey.generate()
_OK = facts_pb2.CollectorStatus.OK


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> facts_pb2.Snapshot:
    """The facts of one real default-scope collection of this machine."""
    done = collect_bundle(key=KEY, output_dir=tmp_path_factory.mktemp("real"))
    return BundleView.from_file(done.bundle.path).snapshot


def _diff(tmp: Path, a: facts_pb2.Snapshot, b: facts_pb2.Snapshot) -> DiffResult:
    pa, pb = write_bundle(tmp / "a", KEY, a), write_bundle(tmp / "b", KEY, b)
    return diff_bundles(BundleView.from_file(pa), BundleView.from_file(pb))


def _pair(real: facts_pb2.Snapshot, change: Callable[[facts_pb2.Snapshot], None]) -> tuple[
        facts_pb2.Snapshot, facts_pb2.Snapshot]:
    a, b = facts_pb2.Snapshot(), facts_pb2.Snapshot()
    a.CopyFrom(real)
    b.CopyFrom(real)
    a.bundle_id = b.bundle_id = ""
    change(b)
    return a, b


def _changed(d: DiffResult) -> dict[str, tuple[Change, ...]]:
    return {s.name: s.changed for s in d.sections if s.changed}


def test_a_collection_against_itself_has_no_differences(tmp_path: Path, real: facts_pb2.Snapshot) -> None:
    d = _diff(tmp_path, *_pair(real, lambda b: None))
    assert d.empty, render_diff_text(d)
    assert "no differences" in render_diff_text(d)


def test_cpu_load_memory_and_swap_show_before_and_after(tmp_path: Path, real: facts_pb2.Snapshot) -> None:
    def busier(s: facts_pb2.Snapshot) -> None:
        for x in s.timeseries.samples:  # 85 points of all CPUs on top of the agent's own share
            x.agent_cpu_percent, x.cpu_percent = 10.0, 95.0
        s.cpu.load1 += 2 * s.cpu.logical_count + 1
        s.memory.available -= s.memory.total * 3 // 10
        s.memory.percent += 30.0

    a, b = _pair(real, busier)
    for s in (a, b):
        s.memory.swap_total, s.memory.swap_percent = 2 * GIB, 10.0
        s.memory.swap_used = s.memory.swap_total // 10
    for x in a.timeseries.samples:
        x.agent_cpu_percent, x.cpu_percent = 10.0, 12.0
    b.memory.swap_percent, b.memory.swap_used = 60.0, int(1.2 * GIB)
    d = _diff(tmp_path, a, b)
    changed = _changed(d)
    assert [(c.field, c.before, c.after) for c in changed["cpu"]] == [("busy_pct", 2.0, 85.0)]
    assert [(c.field, c.before, c.after) for c in changed["load"]] == [
        ("load1", round(real.cpu.load1, 2), round(b.cpu.load1, 2))]
    (mem,) = changed["memory"]
    assert (mem.field, mem.before, mem.after) == ("used_pct", round(a.memory.percent, 1), round(b.memory.percent, 1))
    assert mem.size_after - mem.size_before == a.memory.total * 3 // 10  # type: ignore[operator]
    (sw,) = changed["swap"]
    assert (sw.before, sw.after, sw.size_before, sw.size_after) == (10.0, 60.0, 2 * GIB // 10, int(1.2 * GIB))
    text = render_diff_text(d)
    assert "  ~ busy (without the agent): 2.0 % -> 85.0 %" in text
    assert "  ~ used: 10.0 % -> 60.0 % (204.8 MiB -> 1.2 GiB)" in text  # swap
    assert f"  ~ load1: {round(real.cpu.load1, 2):g} -> {round(b.cpu.load1, 2):g}" in text


def test_noise_is_not_a_change(tmp_path: Path, real: facts_pb2.Snapshot) -> None:
    """What moves between two runs of an unchanged machine stays below every tolerance."""
    def jitter(s: facts_pb2.Snapshot) -> None:
        for i, x in enumerate(s.timeseries.samples):
            x.cpu_percent = min(100.0, x.cpu_percent + (6.0 if i % 2 else -6.0))
        s.cpu.total_percent = 100.0 - s.cpu.total_percent  # one sub-second instant says little
        s.cpu.load1 += 0.4
        s.memory.available -= s.memory.total // 50
        s.memory.percent += 2.0
        s.host.uptime_seconds += 2.0  # always moves: not a fact to compare
        s.host.boot_time.seconds += 1  # psutil's boot time jitters by a second
        s.collected_at.seconds += 2
        for p in s.disks.partitions:
            p.percent += 0.4
            p.used += p.total // 250
        for p in (*s.processes.top_cpu, *s.processes.top_rss):
            p.cpu_percent *= 1.3  # a sub-second share of a core on a busy machine
            p.rss += 1 << 20

    d = _diff(tmp_path, *_pair(real, jitter))
    assert _changed(d) == {}, render_diff_text(d)


def test_filesystem_shows_sizes_beside_percentages(tmp_path: Path, real: facts_pb2.Snapshot) -> None:
    root = next(p.mountpoint for p in real.disks.partitions if p.total)

    def fill(s: facts_pb2.Snapshot) -> None:
        p = next(p for p in s.disks.partitions if p.mountpoint == root)
        p.used += int(p.total * 0.4)
        p.percent += 40.0
        s.disks.partitions.add(mountpoint="/data", device="/dev/sdz1", fstype="xfs", total=10 * GIB, used=GIB,
                               percent=10.0)

    a, b = _pair(real, fill)
    d = _diff(tmp_path, a, b)
    fs = d.section("filesystems")
    assert fs.added == ("/data",)
    (c,) = fs.changed
    before = next(p for p in a.disks.partitions if p.mountpoint == root)
    assert (c.key, c.field, c.size_before) == (root, "used_pct", before.used)
    text = render_diff_text(d)
    assert f"  ~ {root} used: {before.percent:.1f} % -> {before.percent + 40:.1f} % (" in text
    assert "  + added: /data (device /dev/sdz1, fstype xfs, size 10.0 GiB, used 10.0 % (1.0 GiB))" in text


def test_processes_keyed_by_command_line_without_the_agent(tmp_path: Path, real: facts_pb2.Snapshot) -> None:
    """A new ``python3`` hog shows although a ``python3`` (the agent's own) was in the older top list."""
    agent = [p for p in real.processes.top_cpu if p.agent]
    assert agent, "the collecting process is in its own top-CPU list, marked agent"
    name = agent[0].name

    def hog(s: facts_pb2.Snapshot) -> None:
        for p in (*s.processes.top_cpu, *s.processes.top_rss):
            if p.agent:
                p.cpu_percent, p.rss = 99.0, 4 * GIB  # the agent's own work: never compared
        s.processes.top_cpu.add(pid=4242, name=name, cmdline=f"{name} /opt/app/crunch.py --all", cpu_percent=38.0,
                                rss=200 << 20)

    d = _diff(tmp_path, *_pair(real, hog))
    pr = d.section("processes")
    assert pr.added == (f"{name} /opt/app/crunch.py --all",), render_diff_text(d)
    assert (pr.removed, pr.changed) == ((), ())
    assert pr.detail(pr.added[0])["cpu_percent"].value == 38.0
    assert f"  + new: {name} /opt/app/crunch.py --all (38.0 % CPU, RSS 200.0 MiB)" in render_diff_text(d)
    doc = json.loads(json.dumps(d.to_dict()))
    assert doc["sections"]["processes"]["values"][pr.added[0]] == {"cpu_percent": 38.0, "rss": 200 << 20, "count": 1}


def test_absent_from_a_top_list_is_not_gone_when_below_its_cut_off(tmp_path: Path, real: facts_pb2.Snapshot) -> None:
    """Top-N lists: a process missing from one list was below its last entry, not necessarily gone."""
    def lists(s: facts_pb2.Snapshot, extra: float) -> None:
        del s.processes.top_cpu[:], s.processes.top_rss[:]
        for i in range(5):
            s.processes.top_cpu.add(pid=100 + i, name="w", cmdline=f"worker {i}", cpu_percent=30.0 - i, rss=1 << 20)
        if extra:
            s.processes.top_cpu.add(pid=200, name="w", cmdline="worker late", cpu_percent=extra, rss=1 << 20)

    a, b = _pair(real, lambda s: lists(s, 27.0))
    lists(a, 0.0)
    assert _diff(tmp_path, a, b).section("processes").empty  # 27 % against an older cut-off of 26 %


def test_collector_not_run_is_not_compared(tmp_path: Path, real: facts_pb2.Snapshot) -> None:
    """A real collection that skipped fragmentation and services: nothing 'removed' or 'resolved'."""
    done = collect_bundle(key=KEY, output_dir=tmp_path / "skip",
                          spec=CollectionSpec(exclude=("fragmentation", "services")))
    full = write_bundle(tmp_path / "full", KEY, facts_pb2.Snapshot.FromString(real.SerializeToString()))
    for a, b, side in ((full, done.bundle.path, "newer"), (done.bundle.path, full, "older")):
        d = diff_bundles(BundleView.from_file(a), BundleView.from_file(b))
        for name in ("fragmentation", "failed_services"):
            s = d.section(name)
            assert s.empty and [n.key for n in s.not_compared] == [""], render_diff_text(d)
            assert f"{s.name.removeprefix('failed_')} skipped in the {side} bundle" in s.not_compared[0].reason
        findings = d.section("findings")
        assert not any(k.startswith(("fragmentation", "services")) for k in findings.added + findings.removed)
        assert f"fragmentation skipped in the {side} bundle" in render_diff_text(d)


def test_reboot_and_interface_down_show(tmp_path: Path, real: facts_pb2.Snapshot) -> None:
    nic = real.network.interfaces[0].name

    def rebooted(s: facts_pb2.Snapshot) -> None:
        s.host.boot_time.seconds += 3600
        s.host.uptime_seconds = 60.0
        next(n for n in s.network.interfaces if n.name == nic).is_up = False

    d = _diff(tmp_path, *_pair(real, rebooted))
    assert [(c.field, c.after - c.before) for c in d.section("os").changed] == [("booted", 3600)]  # type: ignore[operator]
    assert [(c.key, c.field, c.after) for c in d.section("interfaces").changed] == [(nic, "up", False)]
    assert "  ~ booted: " in render_diff_text(d) and "Z -> " in render_diff_text(d)


def test_port_opened_between_two_real_collections(tmp_path: Path, real: facts_pb2.Snapshot) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        done = collect_bundle(key=KEY, output_dir=tmp_path / "b", spec=CollectionSpec(only=("host", "netdepth")))
    before = write_bundle(tmp_path / "a", KEY, facts_pb2.Snapshot.FromString(real.SerializeToString()))
    d = diff_bundles(BundleView.from_file(before), BundleView.from_file(done.bundle.path))
    assert f"tcp 127.0.0.1:{port}" in d.section("listening_ports").added, render_diff_text(d)
    # What the second run did not collect is not compared, whatever the first said.
    assert d.section("processes").empty and d.section("processes").not_compared[0].reason == (
        "processes skipped in the newer bundle")


def _walk(s: facts_pb2.Snapshot, whole: bool, pct: float, n: int = 1000, eligible: int = 50_000) -> None:
    del s.fragmentation.filesystems[:]
    for c in s.collectors:
        if c.name == "fragmentation":  # the real run may have timed out on a busy machine
            c.state, c.error = _OK, ""
    f = s.fragmentation.filesystems.add(mountpoint="/", method="fiemap", files_sampled=n, pct_files_fragmented=pct)
    f.histogram["1"] = n
    f.note = (f"walked 90000 entries ({'whole filesystem' if whole else 'cut by budget'}), {eligible} files >= 64 KiB "
              f"eligible; sample: {n} uniform + {n} largest")


def test_fragmentation_compared_within_its_sampling_error(tmp_path: Path, real: facts_pb2.Snapshot) -> None:
    # 1,000 of 50,000 files: 5 % and 7 % have standard errors of 0.7 and 0.8 points (3 sigma of the
    # difference: 3.2 points); 5 % and 12 %: 0.7 and 1.0 (3.7 points).
    a, b = _pair(real, lambda s: _walk(s, True, 7.0))
    _walk(a, True, 5.0)
    assert _diff(tmp_path / "1", a, b).section("fragmentation").empty
    _walk(b, True, 12.0)
    (c,) = _diff(tmp_path / "2", a, b).section("fragmentation").changed
    assert (c.field, c.before, c.after) == ("pct_files_fragmented", 5.0, 12.0)
    assert 3.5 < c.tolerance < 4.0


def test_fragmentation_of_a_walk_cut_by_its_budget_is_not_compared(tmp_path: Path,
                                                                    real: facts_pb2.Snapshot) -> None:
    a, b = _pair(real, lambda s: _walk(s, False, 56.4, n=117))
    _walk(a, True, 0.6)
    frag = _diff(tmp_path, a, b).section("fragmentation")
    assert frag.empty
    assert [n.key for n in frag.not_compared] == ["/"]
    assert "cut by its time budget" in frag.not_compared[0].reason and "newer" in frag.not_compared[0].reason


# --- a crafted pair with one change per section, every collector ok in both -----------------------


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a = healthy_snapshot()
    b = healthy_snapshot()
    for s in (a, b):
        del s.collectors[:]
        for name in ("host", "cpu", "memory", "disks", "network", "netdepth", "fragmentation", "processes",
                     "services", "clock", "logs", "timeseries"):
            s.collectors.add(name=name, state=_OK)
        _walk(s, True, 0.65, n=2000, eligible=2000)  # every eligible file mapped: exact figures
        s.fragmentation.filesystems[0].mountpoint = "/var"
    b.host.kernel = "6.1.0-20-amd64"
    b.disks.partitions[1].percent, b.disks.partitions[1].used = 98.0, 98 * GIB  # /var fills: also a finding
    b.disks.partitions.add(mountpoint="/data", device="/dev/sdb1", fstype="xfs", total=10**12, percent=1.0)
    b.fragmentation.filesystems[0].pct_files_fragmented = 12.5
    del b.network_depth.listening[0]                          # sshd stopped listening
    b.network_depth.listening.add(protocol="tcp", address="0.0.0.0", port=8080, process="java")
    b.services.failed.add(name="nginx.service", state="failed", sub_state="failed", result="exit-code")
    b.network.interfaces[0].addresses[0].address = "10.0.0.9"
    b.processes.top_cpu.add(pid=4000, name="java", cmdline="java -jar app.jar", cpu_percent=50.0)
    return write_bundle(tmp_path / "a", KEY, a), write_bundle(tmp_path / "b", KEY, b)


def test_diff_reports_exactly_the_changes(pair: tuple[Path, Path]) -> None:
    d = diff_bundles(BundleView.from_file(pair[0]), BundleView.from_file(pair[1]))
    got = {s.name: (s.added, s.removed, tuple((c.key, c.field, c.before, c.after) for c in s.changed))
           for s in d.sections if not s.empty}
    assert got == {
        "os": ((), (), (("host", "kernel", "6.1.0-18-amd64", "6.1.0-20-amd64"),)),
        "filesystems": (("/data",), (), (("/var", "used_pct", 63.0, 98.0),)),
        "fragmentation": ((), (), (("/var", "pct_files_fragmented", 0.7, 12.5),)),
        "listening_ports": (("tcp 0.0.0.0:8080",), ("tcp 0.0.0.0:22",), ()),
        "failed_services": (("nginx.service",), (), ()),
        "interfaces": ((), (), (("eth0", "addresses", "10.0.0.5", "10.0.0.9"),)),
        "processes": (("java -jar app.jar",), (), ()),
        "findings": (("disk-full:/var:space", "services-failed"), (), ()),
    }
    text = render_diff_text(d)
    assert "  + now failed: nginx.service" in text
    assert "  ~ /var used: 63.0 % -> 98.0 % (63.0 GiB -> 98.0 GiB)" in text
    assert "  + new: disk-full:/var:space" in text
    assert "  + new: java -jar app.jar (50.0 % CPU)" in text


def test_a_finding_that_crossed_its_threshold_within_noise_is_not_a_change(tmp_path: Path) -> None:
    """Memory 89 % then 91 % used: the memory-pressure rule fires at < 10 % available, the figure moved
    2 points (noise for memory): the finding is listed as not compared, not as new."""
    a, b = healthy_snapshot(), healthy_snapshot()
    for s, used in ((a, 89.0), (b, 91.0)):
        s.collectors.add(name="memory", state=_OK)
        s.memory.percent = used
        s.memory.available = int(s.memory.total * (100 - used) / 100)
    d = _diff(tmp_path / "1", a, b)
    findings = d.section("findings")
    assert findings.empty and [n.key for n in findings.not_compared] == ["memory-pressure"], render_diff_text(d)
    assert "none -> warning: the memory figures it rests on did not change beyond their noise" in (
        findings.not_compared[0].reason)
    b.memory.percent, b.memory.available = 97.0, b.memory.total * 3 // 100  # a real change: reported
    d = _diff(tmp_path / "2", a, b)
    assert d.section("findings").added == ("memory-pressure",), render_diff_text(d)


def test_json_is_one_document(pair: tuple[Path, Path]) -> None:
    out = CliRunner().invoke(app, ["diff", str(pair[0]), str(pair[1]), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)  # one document, nothing else on stdout
    assert set(doc) == {"a", "b", "sections", "casefile_version"}
    for s in doc["sections"].values():
        assert {"added", "removed", "changed", "not_compared"} <= set(s)
    (used,) = doc["sections"]["filesystems"]["changed"]
    assert used == {"key": "/var", "field": "used_pct", "before": 63.0, "after": 98.0, "unit": "%",
                    "size_before": 63 * GIB, "size_after": 98 * GIB, "tolerance": 1.0}


def test_same_bundle_has_no_differences(pair: tuple[Path, Path]) -> None:
    view = BundleView.from_file(pair[0])
    d = diff_bundles(view, view)
    assert d.empty
    assert "no differences" in render_diff_text(d)


def test_different_hosts_refused_unless_forced(tmp_path: Path) -> None:
    a = write_bundle(tmp_path / "a", KEY, healthy_snapshot("db-1"))
    b = write_bundle(tmp_path / "b", KEY, healthy_snapshot("web-7"))
    with pytest.raises(DifferentHostsError, match="different hosts"):
        diff_bundles(BundleView.from_file(a), BundleView.from_file(b))
    assert diff_bundles(BundleView.from_file(a), BundleView.from_file(b), force=True).host_b == "web-7"
    result = CliRunner().invoke(app, ["diff", str(a), str(b)])
    assert isinstance(result.exception, DifferentHostsError)  # main() maps it to exit 4 with one line
    forced = CliRunner().invoke(app, ["diff", str(a), str(b), "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    assert '"host": "web-7"' in forced.output


# --- untrusted facts ------------------------------------------------------------------------------

_any_float = st.floats(allow_nan=True, allow_infinity=True)
_u64 = st.integers(0, 2**64 - 1)


@st.composite
def _snapshots(draw: st.DrawFn) -> facts_pb2.Snapshot:
    """Facts as a hostile or broken agent could sign them: any number where the diff reads one."""
    s = healthy_snapshot()
    s.host.boot_time.seconds = draw(st.integers(-(2**62), 2**62))
    s.cpu.total_percent, s.cpu.load1, s.cpu.logical_count = draw(_any_float), draw(_any_float), draw(
        st.integers(0, 2**31 - 1))
    s.memory.percent, s.memory.total, s.memory.available = draw(_any_float), draw(_u64), draw(_u64)
    s.memory.swap_percent, s.memory.swap_used = draw(_any_float), draw(_u64)
    s.timeseries.agent_cpu_known = draw(st.booleans())
    for x in s.timeseries.samples:
        x.cpu_percent, x.agent_cpu_percent, x.cpu_system_percent = draw(_any_float), draw(_any_float), draw(_any_float)
    p = s.disks.partitions[0]
    p.percent, p.used, p.total, p.inodes_total, p.inodes_used = (draw(_any_float), draw(_u64), draw(_u64),
                                                                 draw(_u64), draw(_u64))
    f = s.fragmentation.filesystems[0]
    f.pct_files_fragmented, f.pct_bytes_in_fragmented, f.fragments_mean = (draw(_any_float), draw(_any_float),
                                                                           draw(_any_float))
    f.files_sampled, f.method = draw(_u64), draw(st.sampled_from(["fiemap", "defrag-output", ""]))
    f.note = draw(st.sampled_from(["", "walked 9 entries (whole filesystem), 0 files >= 64 KiB eligible",
                                   "walked 9 entries (whole filesystem), 99999999999999999999 files",
                                   "walked 9 entries (cut by budget), 5 files"]))
    f.histogram["1"] = draw(_u64)
    for _ in range(draw(st.integers(0, 3))):
        s.processes.top_cpu.add(pid=draw(st.integers(0, 9)), name="x", cmdline=draw(st.text(max_size=20)),
                                cpu_percent=draw(_any_float), rss=draw(_u64), agent=draw(st.booleans()))
    s.processes.sample_seconds = draw(_any_float)
    for c in draw(st.lists(st.sampled_from(["host", "cpu", "memory", "disks", "fragmentation", "processes"]),
                           max_size=6)):
        s.collectors.add(name=c, state=draw(st.sampled_from(list(facts_pb2.CollectorStatus.State.values()))))
    return s


@settings(max_examples=60, deadline=None)
@given(_snapshots(), _snapshots())
def test_any_facts_give_a_diff_and_one_json_document(a: facts_pb2.Snapshot, b: facts_pb2.Snapshot) -> None:
    d = diff_bundles(BundleView.from_snapshot(a), BundleView.from_snapshot(b))
    assert render_diff_text(d).startswith("diff ")
    json.loads(json.dumps(d.to_dict(), allow_nan=False))  # strict JSON: no NaN or Infinity
