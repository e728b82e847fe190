"""The fragmentation rules on recorded facts: the support case's volume, bytes over file counts,
titles that agree with the body, free space apart, and Windows' figures through the same rules.

The real-filesystem side of the same claims is test_fragmentation_findings.py (loop images).
"""

from __future__ import annotations

from pathlib import Path

from agent.analysis import BundleView, Evidence, Finding, run_rules
from agent.collect.builtin import fragmentation_windows as win
from agent.collect.fiemap import FragmentCount
from agent.collect.fragwalk import is_fragmented
from protos import facts_pb2
from tests.fixtures.analysis.crafted import healthy_snapshot

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GIB, MIB, TIB = 1 << 30, 1 << 20, 1 << 40


def _run(s: facts_pb2.Snapshot) -> list[Finding]:
    return list(run_rules(BundleView.from_snapshot(s, [])).findings)


def _frag(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.code.startswith("fragmentation")]


def _backup_volume(s: facts_pb2.Snapshot) -> facts_pb2.FsFragmentation:
    """The support case: five large files on a backup volume, one in 5,790 extents, 83 % of the bytes fragmented."""
    f = s.fragmentation.filesystems.add(mountpoint="/backup", device="/dev/sdb1", fstype="xfs", method="fiemap")
    f.files_sampled, f.files_fragmented, f.files_eligible, f.walk_complete = 5, 2, 5, True
    f.pct_files_fragmented, f.pct_bytes_in_fragmented = 40.0, 83.0
    f.fragments_p95, f.fragments_max = 5790, 5790
    f.worst.add(path="/backup/job1.vbk", size=600 * GIB, fragments=5790, mapped_bytes=600 * GIB, fragmented=True)
    f.worst.add(path="/backup/job2.vib", size=40 * GIB, fragments=900, mapped_bytes=40 * GIB - 5, fragmented=False)
    f.worst.add(path="/backup/job3.vib", size=300 * MIB, fragments=2100, mapped_bytes=300 * MIB, fragmented=True)
    f.free_space.available, f.free_space.free_extents = True, 48_000
    f.free_space.pct_free_in_small_extents, f.free_space.avg_free_extent_bytes = 76.0, 600_000
    f.free_space.largest_free_extent_bytes = 90 * MIB
    return f


def test_the_support_cases_volume_is_judged_from_five_files_and_names_the_worst() -> None:
    s = healthy_snapshot()
    _backup_volume(s)
    heavy, free = sorted(_frag(_run(s)), key=lambda f: f.code)[:2][::-1]
    assert (heavy.code, heavy.severity, heavy.subject) == ("fragmentation-heavy", "critical", "/backup")
    assert heavy.title == "/backup: fragmented files hold 83% of the data; worst /backup/job1.vbk in 5,790 extents"
    assert "/backup/job1.vbk (600.0 GiB in 5,790 extents of 106.1 MiB)" in heavy.explanation
    assert "/backup/job3.vib (300.0 MiB in 2,100 extents of 146.3 KiB)" in heavy.explanation
    assert "job2" not in heavy.explanation  # in 900 large extents: not fragmented
    assert "with 5 files sampled the share of files is not judged" in heavy.explanation
    assert "0%" not in heavy.title
    # Free space in small pieces is a finding of its own, about new writes.
    assert (free.code, free.severity, free.subject) == ("fragmentation-free-space", "warning", "/backup:free")
    assert free.title == "/backup: 76% of the free space is in pieces under 1 MiB"
    assert "48,000 free extents of 585.9 KiB on average, the largest 90.0 MiB" in free.explanation


def test_one_file_is_enough() -> None:
    s = healthy_snapshot()
    f = s.fragmentation.filesystems.add(mountpoint="/srv", fstype="ext4", method="fiemap")
    f.files_sampled, f.files_fragmented, f.pct_files_fragmented, f.pct_bytes_in_fragmented = 1, 1, 100.0, 100.0
    f.files_eligible, f.walk_complete = 1, True
    f.worst.add(path="/srv/db.img", size=8 * GIB, fragments=40_000, mapped_bytes=8 * GIB, fragmented=True)
    (heavy,) = _frag(_run(s))
    assert heavy.severity == "critical" and "worst /srv/db.img in 40,000 extents" in heavy.title


def test_a_walk_cut_short_makes_no_share_but_a_file_is_still_a_fact() -> None:
    """Five files mapped of a walk the budget cut (a busy machine): 83 % of them is no estimate."""
    s = healthy_snapshot()
    f = _backup_volume(s)
    f.walk_complete, f.files_eligible = False, 90_000
    del f.worst[0]  # what is left is 300 MiB in pieces: below the size that counts alone
    assert [x.code for x in _frag(_run(s))] == ["fragmentation-free-space"]
    f.worst.add(path="/backup/job1.vbk", size=600 * GIB, fragments=5790, mapped_bytes=600 * GIB, fragmented=True)
    (heavy,) = [x for x in _frag(_run(s)) if x.code == "fragmentation-heavy"]
    assert heavy.title == "/backup: /backup/job1.vbk (600.0 GiB) is in 5,790 extents"
    assert "too few of a walk cut short by its budget" in heavy.explanation


def test_bytes_weigh_more_than_file_counts() -> None:
    """One 2 TiB file in 50,000 extents against a thousand small fragmented files."""
    assert is_fragmented(2 * TIB, FragmentCount(50_000, 50_000, 2 * TIB, 0, 0, 0, 0))  # 3x ideal, 40 MiB pieces
    assert not is_fragmented(2 * TIB, FragmentCount(20_000, 20_000, 2 * TIB, 0, 0, 0, 0))  # near ideal (16,384)
    big, small = healthy_snapshot(), healthy_snapshot()
    b = big.fragmentation.filesystems[0]
    b.pct_bytes_in_fragmented = 12.0  # a large volume: the file is a small share of it
    b.worst.add(path="/var/backup.vbk", size=2 * TIB, fragments=50_000, mapped_bytes=2 * TIB, fragmented=True)
    m = small.fragmentation.filesystems[0]
    m.files_sampled, m.pct_files_fragmented, m.pct_bytes_in_fragmented = 1000, 50.0, 4.0
    for i in range(10):
        m.worst.add(path=f"/var/cache/c{i}", size=200_000, fragments=12, mapped_bytes=200_000, fragmented=True)
    (hb,) = _frag(_run(big))
    (hs,) = _frag(_run(small))
    assert (hb.severity, hs.severity) == ("critical", "warning")
    assert hb.title == "/var: /var/backup.vbk (2.0 TiB) is in 50,000 extents"
    assert hs.title == "/var: 50% of the files are fragmented; worst /var/cache/c0 in 12 extents"


def test_a_large_fragmented_file_warns_even_when_the_share_is_small() -> None:
    s = healthy_snapshot()
    s.fragmentation.filesystems[0].worst.add(
        path="/var/lib/pg/16384.1", size=GIB, fragments=9000, mapped_bytes=GIB, fragmented=True
    )
    (f,) = _frag(_run(s))
    assert f.severity == "warning" and f.title.startswith("/var: /var/lib/pg/16384.1 (1.0 GiB) is in 9,000 extents")


def test_the_healthy_baseline_and_files_in_large_pieces_raise_nothing() -> None:
    s = healthy_snapshot()
    f = s.fragmentation.filesystems[0]
    # A 20 GiB image in 160 ideal extents, as the collector marks it: not fragmented.
    f.worst.add(path="/var/lib/vm.qcow2", size=20 * GIB, fragments=160, mapped_bytes=20 * GIB, fragmented=False)
    f.free_space.available, f.free_space.pct_free_in_small_extents = True, 3.0
    assert _frag(_run(s)) == []


def _load(s: facts_pb2.Snapshot, system: float, agent: float, iowait: float = 0.5) -> None:
    s.timeseries.agent_cpu_known = True
    for x in s.timeseries.samples:
        x.cpu_system_percent, x.agent_cpu_system_percent, x.cpu_iowait_percent = system, agent, iowait


def test_the_support_cases_readers_raise_the_load_finding_by_name() -> None:
    s = healthy_snapshot()
    f = _backup_volume(s)
    f.worst[0].open_by.add(pid=4100, name="VeeamAgent")
    f.worst[0].open_by.add(pid=4101, name="VeeamAgent")
    _load(s, system=47.0, agent=6.0)  # 41% besides the agent
    (load,) = [x for x in _run(s) if x.code == "fragmentation-kernel-load"]
    assert load.severity == "critical"
    assert load.title == (
        "/backup: /backup/job1.vbk in 5,790 extents read by VeeamAgent (pid 4100) "
        "while kernel CPU is 41% besides the agent"
    )
    assert "open in VeeamAgent (pid 4100), VeeamAgent (pid 4101)" in load.explanation
    paths = {e.fact_path for e in load.evidence if isinstance(e, Evidence)}
    assert "fragmentation.filesystems[1].worst[0].open_by" in paths


def test_io_wait_counts_only_with_a_reader_of_a_fragmented_file() -> None:
    """I/O wait belongs to no process; the agent's own walk waits on the disk too."""
    s = healthy_snapshot()
    f = _backup_volume(s)
    _load(s, system=5.0, agent=4.0, iowait=45.0)
    assert not [x for x in _run(s) if x.code == "fragmentation-kernel-load"]
    f.worst[2].open_by.add(pid=77, name="restore")
    (load,) = [x for x in _run(s) if x.code == "fragmentation-kernel-load"]
    assert load.severity == "critical"
    assert load.title == "/backup: /backup/job3.vib in 2,100 extents read by restore (pid 77) while I/O wait is 45%"


def test_windows_figures_feed_the_same_rules() -> None:
    """WMI DefragAnalysis and defrag /A /V output, parsed from recorded fixtures, through the rules."""
    s = healthy_snapshot()
    del s.fragmentation.filesystems[:]
    s.fragmentation.filesystems.extend(
        win.parse_defrag_analysis_json((FIXTURES / "windows/defrag_analysis_wmi.json").read_text())
    )
    def text(name: str, mount: str) -> facts_pb2.FsFragmentation:
        return win.parse_defrag_text(win.decode_console((FIXTURES / "windows" / name).read_bytes()), mount)

    german, english = text("defrag_av_de_cp850.txt", "F:\\"), text("defrag_av_en.txt", "G:\\")
    s.fragmentation.filesystems.extend([german, english])
    found = {(f.code, f.subject): f for f in _frag(_run(s))}
    # C: (2 %) and G: (the same volume's text output) are healthy; D: is ReFS, which
    # DefragAnalysis does not analyse: no figures, no finding.
    assert set(found) == {("fragmentation-heavy", "E:"), ("fragmentation-free-space", "E::free")}
    heavy, free = found["fragmentation-heavy", "E:"], found["fragmentation-free-space", "E::free"]
    assert heavy.severity == "warning" and heavy.title == "E: 38% fragmented by the Windows analysis"
    assert "rates the volume 38% fragmented; 20,415 of 91,210 files are fragmented" in heavy.explanation
    assert free.title == "E: free space 71% fragmented by the Windows analysis"
    # German volume: 17 % by Windows, 4 % of files: below the thresholds, as Windows itself says.
    assert german.vendor_fragmented_pct == 17


def test_a_small_fragmented_file_held_open_is_not_the_pattern() -> None:
    """A daemon's log in a few small pieces, open while the kernel is busy: seen on a healthy VM."""
    s = healthy_snapshot()
    w = s.fragmentation.filesystems[0].worst.add(
        path="/var/lib/mysql/aria_log.00000001", size=417_792, fragments=9, mapped_bytes=417_792, fragmented=True
    )
    w.open_by.add(pid=700, name="mariadbd")
    _load(s, system=47.0, agent=6.0, iowait=45.0)
    assert _frag(_run(s)) == []


def test_the_load_finding_on_a_large_file_alone_does_not_call_the_volume_0_percent_fragmented() -> None:
    s = healthy_snapshot()
    s.fragmentation.filesystems[0].pct_bytes_in_fragmented = 3.0
    w = s.fragmentation.filesystems[0].worst.add(
        path="/var/lib/vm.img", size=40 * GIB, fragments=90_000, mapped_bytes=40 * GIB, fragmented=True
    )
    w.open_by.add(pid=900, name="qemu-system-x86")
    _load(s, system=40.0, agent=5.0)
    (load,) = [x for x in _run(s) if x.code == "fragmentation-kernel-load"]
    assert load.title == (
        "/var: /var/lib/vm.img in 90,000 extents read by qemu-system-x86 (pid 900) while kernel CPU is 35% "
        "besides the agent"
    )
    assert "/var (ext4) holds a large fragmented file and" in load.explanation and "% fragmented" not in (
        load.explanation
    )
