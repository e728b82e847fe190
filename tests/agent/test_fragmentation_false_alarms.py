"""False alarms on a healthy machine, reproduced with real files and real collections.

An audit found a freshly provisioned VM reported as critically fragmented under kernel
load: large files in a few big pieces counted as fragmented, the largest files the
sample adds on purpose weighed in as if typical, and the agent's own walk of the disk
was taken for the host's kernel load. Each test here builds the situation for real
(files in tmp_path, which is on the root filesystem; ``run_collection``; the rules), and
one checks that kernel load from other processes still raises the finding.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.analysis import BundleView, Evidence, run_rules
from agent.collect import CollectionSpec, run_collection
from agent.collect.builtin.timeseries import AgentCpu
from agent.collect.fiemap import fragments_of
from agent.collect.fragwalk import is_fragmented
from protos import facts_pb2
from tests.agent.fragfiles import write_interleaved

MIB = 1 << 20
SMALL = 70_000  # above the 64 KiB floor, one piece


def _small_files(root: Path, n: int) -> list[Path]:
    root.mkdir()
    paths = [root / f"s{i:03d}" for i in range(n)]
    for p in paths:
        p.write_bytes(os.urandom(SMALL))
    return paths


def _fiemap_or_skip(path: Path) -> int:
    try:
        return fragments_of(str(path)).fragments
    except OSError as exc:
        pytest.skip(f"no FIEMAP on tmp: {exc}")


def _fragmentation(root: Path, max_files: int = 4000) -> facts_pb2.Snapshot:
    spec = CollectionSpec(
        only=("fragmentation",),
        options={"frag_mountpoints": str(root), "frag_seed": 1, "frag_budget_s": 5.0, "frag_max_files": max_files},
    )
    with run_collection(spec) as result:
        snapshot = facts_pb2.Snapshot()
        snapshot.CopyFrom(result.snapshot)
    return snapshot


def _codes(snapshot: facts_pb2.Snapshot, **overrides: dict[str, float]) -> list[tuple[str, str]]:
    found = run_rules(BundleView.from_snapshot(snapshot, []), overrides=overrides).findings
    return [(f.code, f.severity) for f in found]


def test_large_files_in_a_few_big_pieces_are_not_heavy_fragmentation(tmp_path: Path) -> None:
    """Big files in 2-5 pieces of megabytes each (ext4 lays interleaved appends out so) read
    as fast as contiguous ones; counted as fragmented they held ~95 % of the sample's bytes."""
    _small_files(tmp_path / "small", 40)
    big = [tmp_path / f"big{i}" for i in range(4)]
    write_interleaved(big, [16] * 4, os.urandom(MIB))
    os.sync()
    pieces = [_fiemap_or_skip(p) for p in big]
    if max(pieces) < 2:
        pytest.skip(f"the allocator kept every big file in one piece here: {pieces}")
    (fs,) = _fragmentation(tmp_path).fragmentation.filesystems
    assert fs.files_sampled == 44 and fs.fragments_max == max(pieces)
    assert fs.pct_bytes_in_fragmented == 0.0 and fs.files_fragmented == 0
    assert not [c for c in _codes(_fragmentation(tmp_path)) if c[0].startswith("fragmentation")]


def test_the_largest_files_do_not_inflate_the_byte_share(tmp_path: Path) -> None:
    """300 small whole files and two really fragmented 1 MiB files (9 % of the bytes): the
    largest-files pool holds both, and counted like the uniform draw they made ~45 %."""
    small = _small_files(tmp_path / "small", 300)
    frag = [tmp_path / "frag0", tmp_path / "frag1"]
    write_interleaved(frag, [16, 16])
    os.sync()
    _fiemap_or_skip(frag[0])
    counts = {p: fragments_of(str(p)) for p in [*small, *frag]}
    if not all(is_fragmented(p.stat().st_size, counts[p]) for p in frag):
        pytest.skip("interleaved appends did not fragment the files here")
    sizes = {p: p.stat().st_size for p in counts}
    truth = 100.0 * sum(s for p, s in sizes.items() if is_fragmented(s, counts[p])) / sum(sizes.values())

    snapshot = _fragmentation(tmp_path, max_files=40)  # 30 drawn uniformly + the 10 largest
    (fs,) = snapshot.fragmentation.filesystems
    assert "30 uniform + 10 largest" in fs.note
    assert abs(fs.pct_bytes_in_fragmented - truth) < 2.0, (fs.pct_bytes_in_fragmented, truth)
    assert {w.path for w in fs.worst} >= {str(p) for p in frag}  # the pool still finds them
    assert fs.fragments_max == max(counts[p].fragments for p in frag)
    assert not [c for c in _codes(snapshot) if c[0].startswith("fragmentation")]


def test_a_really_fragmented_tree_is_still_heavy(tmp_path: Path) -> None:
    tree = [tmp_path / f"f{i:02d}" for i in range(24)]
    write_interleaved(tree, [8] * 24)  # 512 KiB files in pieces of ~64-128 KiB
    os.sync()
    _fiemap_or_skip(tree[0])
    snapshot = _fragmentation(tmp_path)
    (fs,) = snapshot.fragmentation.filesystems
    if fs.pct_files_fragmented < 60:
        pytest.skip(f"interleaved appends fragmented only {fs.pct_files_fragmented:.0f}% of the files here")
    assert ("fragmentation-heavy", "critical") in _codes(snapshot)


# --- the agent's own load ------------------------------------------------------------


def _kernel_load_threshold() -> float:
    """Half a CPU of kernel time, as % of all CPUs: what one dd below is well above."""
    return 50.0 / (os.cpu_count() or 1)


def _collect_with_load(tmp_path: Path) -> facts_pb2.Snapshot:
    """Fragmentation of / (the agent's own heavy walk) and of a fragmented tree, with the time series."""
    tree = tmp_path / "tree"
    tree.mkdir()
    write_interleaved([tree / f"f{i:02d}" for i in range(24)], [8] * 24)
    os.sync()
    _fiemap_or_skip(tree / "f00")
    spec = CollectionSpec(
        only=("fragmentation", "timeseries"),
        options={"frag_mountpoints": f"/,{tree}", "frag_budget_s": 0.8, "frag_seed": 2},
    )
    with run_collection(spec) as result:
        snapshot = facts_pb2.Snapshot()
        snapshot.CopyFrom(result.snapshot)
    return snapshot


def _means(snapshot: facts_pb2.Snapshot) -> tuple[float, float]:
    samples = snapshot.timeseries.samples
    return (
        statistics.fmean(x.cpu_system_percent for x in samples),
        statistics.fmean(x.agent_cpu_system_percent for x in samples),
    )


def test_the_time_series_records_the_agents_own_share(tmp_path: Path) -> None:
    snapshot = _collect_with_load(tmp_path)
    series = snapshot.timeseries
    assert series.agent_cpu_known and len(series.samples) >= 2
    for x in series.samples:  # a part of the host's figures
        assert 0.0 <= x.agent_cpu_system_percent <= x.cpu_system_percent
        assert x.agent_cpu_system_percent <= x.agent_cpu_percent <= x.cpu_percent
    assert _means(snapshot)[1] > 0.0, "walking / is kernel work of the agent's own"


def test_the_agents_own_walk_is_not_kernel_load(tmp_path: Path) -> None:
    """The one-shot collect's case: the only kernel load is the agent walking the disk."""
    snapshot = _collect_with_load(tmp_path)
    host, own = _means(snapshot)
    threshold = _kernel_load_threshold()
    if host - own >= threshold:
        pytest.skip(f"other processes kept the kernel busy here ({host - own:.0f}% of all CPUs)")
    (tree_fs,) = [f for f in snapshot.fragmentation.filesystems if f.mountpoint.endswith("/tree")]
    assert tree_fs.pct_files_fragmented >= 15, "the tree must count as fragmented for the rule to be tested"
    codes = _codes(snapshot, **{"fragmentation-kernel-load": {"sys_cpu_pct": threshold}})
    assert not [c for c in codes if c[0] == "fragmentation-kernel-load"], (codes, host, own)


@pytest.fixture
def kernel_busy() -> Iterator[None]:
    """One CPU of kernel time from a process outside the agent's tree: dd copying zeros, started
    through a shell that exits at once, so it is not our descendant."""
    out = subprocess.run(
        ["sh", "-c", "timeout 30 dd if=/dev/zero of=/dev/null bs=1M >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(out.stdout.strip())
    try:
        time.sleep(0.2)  # running at full speed before the collection starts
        yield
    finally:
        os.kill(pid, signal.SIGTERM)  # timeout passes it on to dd


def test_kernel_load_from_other_processes_still_raises_the_finding(tmp_path: Path, kernel_busy: None) -> None:
    snapshot = _collect_with_load(tmp_path)
    host, own = _means(snapshot)
    threshold = _kernel_load_threshold()
    assert host - own >= threshold, (host, own)
    found = run_rules(
        BundleView.from_snapshot(snapshot, []), overrides={"fragmentation-kernel-load": {"sys_cpu_pct": threshold}}
    ).findings
    (finding,) = [f for f in found if f.code == "fragmentation-kernel-load" and f.subject.endswith("/tree")]
    assert "besides the agent" in finding.title and "the agent's own" in finding.explanation
    paths = {e.fact_path for e in finding.evidence if isinstance(e, Evidence)}
    assert "timeseries.samples[*].agent_cpu_system_percent (mean)" in paths


def test_agent_cpu_follows_a_live_grandchild_and_its_reaping() -> None:
    """A child's CPU counts while it runs, and once, not again, when it has been waited for."""
    agent = AgentCpu()
    before = agent.read()
    child = subprocess.Popen(["sh", "-c", "timeout 0.6 dd if=/dev/zero of=/dev/null bs=1M 2>/dev/null; true"])
    time.sleep(0.3)
    running = agent.read()
    child.wait()
    done = agent.read()
    t = os.times()
    assert running[1] - before[1] >= 0.05, "dd, a grandchild, is counted while it runs"
    assert done[0] >= running[0] and done[1] >= running[1]
    assert done[1] - running[1] <= 0.6  # at most what dd could use after the reading
    assert abs(done[0] - (t.user + t.system + t.children_user + t.children_system)) < 0.05
