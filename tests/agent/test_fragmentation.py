"""Fragmentation: fragment counting on crafted extent maps, kernel-struct parsing as untrusted
input, the sampler on real files, partition selection, and the Windows/macOS parsers on
recorded outputs."""

from __future__ import annotations

import contextlib
import os
import random
import struct
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.collect import CollectionSpec, run_collection
from agent.collect.builtin import fragmentation_linux as lin
from agent.collect.builtin import fragmentation_macos as mac
from agent.collect.builtin import fragmentation_windows as win
from agent.collect.builtin.fragmentation import FragmentationCollector, linux_targets
from agent.collect.fiemap import (
    FIEMAP_EXTENT_DELALLOC,
    FIEMAP_EXTENT_ENCODED,
    FIEMAP_EXTENT_LAST,
    FIEMAP_EXTENT_UNKNOWN,
    FIEMAP_EXTENT_UNWRITTEN,
    Extent,
    ExtentMapError,
    count_fragments,
    fragments_of,
    parse_fiemap,
    parse_fsmap,
    summarise_free,
)
from protos import facts_pb2

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
K = 4096


def ext(lo: int, phys: int, length: int, flags: int = 0) -> Extent:
    return Extent(lo * K, phys * K, length * K, flags)


# --- counting ----------------------------------------------------------------------


def test_contiguous_extents_are_one_fragment() -> None:
    # ext4 splits at 128 MiB even when the blocks run on: filefrag says 1.
    c = count_fragments([ext(0, 1000, 32768), ext(32768, 33768, 32768), ext(65536, 66536, 10)])
    assert (c.extents, c.fragments) == (3, 1)


def test_discontiguous_extents_count_each_jump() -> None:
    c = count_fragments([ext(0, 100, 16), ext(16, 500, 16), ext(32, 116, 16), ext(48, 900, 16)])
    assert c.fragments == 4


def test_holes_with_the_same_gap_are_not_fragments() -> None:
    # Sparse file: data every 256 blocks, physical gap equal to the logical gap.
    c = count_fragments([ext(0, 1000, 1), ext(256, 1256, 1), ext(512, 1512, 1)])
    assert c.fragments == 1
    # ...and packed physically (dense) despite logical holes: also one.
    c = count_fragments([ext(0, 1000, 1), ext(256, 1001, 1), ext(512, 1002, 1)])
    assert c.fragments == 1


def test_extent_at_logical_zero_never_adds() -> None:
    # filefrag's quirk: only a non-zero logical offset can start a new fragment.
    assert count_fragments([ext(0, 10, 1)]).fragments == 1
    assert count_fragments([ext(5, 10, 1)]).fragments == 1


def test_delalloc_and_unknown_are_skipped_encoded_and_unwritten_flagged() -> None:
    c = count_fragments(
        [
            ext(0, 100, 4),
            ext(4, 0, 4, FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_UNKNOWN),
            ext(8, 108, 4, FIEMAP_EXTENT_UNWRITTEN),
            ext(12, 900, 4, FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_LAST),
        ]
    )
    assert (c.extents, c.delalloc, c.unwritten, c.encoded) == (4, 1, 1, 1)
    # delalloc skipped; the unwritten one continues the first (same gap); encoded jumps.
    assert c.fragments == 2
    assert c.mapped_bytes == 12 * K
    only_delalloc = count_fragments([ext(0, 0, 8, FIEMAP_EXTENT_DELALLOC)])
    assert only_delalloc.fragments == 0


def test_negative_fields_are_rejected() -> None:
    with pytest.raises(ExtentMapError):
        count_fragments([Extent(0, -1, 10, 0)])


extents_strategy = st.lists(
    st.builds(
        Extent,
        logical=st.integers(0, 2**40),
        physical=st.integers(0, 2**40),
        length=st.integers(0, 2**30),
        flags=st.integers(0, 2**32 - 1),
    ),
    max_size=50,
)


@given(extents_strategy)
def test_fragment_count_is_bounded_by_positioned_extents(extents: list[Extent]) -> None:
    c = count_fragments(extents)
    positioned = [e for e in extents if not e.flags & (FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_UNKNOWN)]
    assert c.extents == len(extents)
    assert (c.fragments == 0) == (not positioned)
    assert 0 <= c.fragments <= len(positioned)


@given(st.lists(st.tuples(st.integers(1, 1000), st.integers(1, 64)), min_size=1, max_size=40))
def test_physically_sequential_layout_is_always_one_fragment(runs: list[tuple[int, int]]) -> None:
    """Any file whose data is laid out in logical order back to back on disk: one fragment."""
    extents, lo, phys = [], 0, 5000
    for hole, length in runs:
        extents.append(ext(lo, phys, length))
        lo += length + hole
        phys += length
    assert count_fragments(extents).fragments == 1


# --- kernel structs, untrusted -------------------------------------------------------


def fiemap_buf(extents: list[tuple[int, int, int, int]], mapped: int | None = None, room: int = 8) -> bytes:
    head = struct.pack("=QQIIII", 0, 2**64 - 1, 0, len(extents) if mapped is None else mapped, room, 0)
    body = b"".join(struct.pack("=QQQ16xI12x", *e) for e in extents)
    return head + body + bytes(56 * (room - len(extents)))


def test_parse_fiemap_reads_the_uapi_layout() -> None:
    got, mapped = parse_fiemap(fiemap_buf([(0, 4096, 8192, 0), (8192, 65536, 4096, 1)]), 8)
    assert mapped == 2
    assert got == [Extent(0, 4096, 8192, 0), Extent(8192, 65536, 4096, 1)]


def test_parse_fiemap_rejects_counts_beyond_the_request() -> None:
    with pytest.raises(ExtentMapError, match="mapped"):
        parse_fiemap(fiemap_buf([], mapped=9), 8)
    with pytest.raises(ExtentMapError, match="shorter"):
        parse_fiemap(b"\0" * 10, 8)


@given(st.binary(max_size=600), st.integers(0, 16))
def test_parse_fiemap_never_crashes_on_garbage(data: bytes, requested: int) -> None:
    try:
        got, mapped = parse_fiemap(data, requested)
    except ExtentMapError:
        return
    assert len(got) == mapped <= requested


@given(st.binary(max_size=800), st.integers(0, 8))
def test_parse_fsmap_never_crashes_on_garbage(data: bytes, requested: int) -> None:
    try:
        recs = parse_fsmap(data, requested)
    except ExtentMapError:
        return
    assert len(recs) <= requested


def test_free_space_merges_adjacent_records_per_device() -> None:
    fs = summarise_free([(1, 0, 4096), (1, 4096, 4096), (1, 1 << 30, 2 << 20), (2, 8192, 4096)])
    assert fs.free_extents == 3
    assert fs.largest_bytes == 2 << 20
    assert fs.small_bytes == 8192 + 4096
    assert fs.avg_bytes == pytest.approx(fs.free_bytes / 3)
    assert summarise_free([]).pct_small == 0.0


# --- summary helpers ---------------------------------------------------------------


def test_buckets_and_percentiles() -> None:
    assert [lin.bucket(n) for n in (1, 2, 3, 4, 9, 10, 99, 100)] == [
        "1", "2-3", "2-3", "4-9", "4-9", "10-99", "10-99", "100+"
    ]
    assert lin.percentile([], 50) == 0.0
    assert lin.percentile([1, 2, 3, 4], 50) == 2.0
    assert lin.percentile(list(range(1, 101)), 95) == 95.0
    assert lin.ideal_fragments(0) == 1
    assert lin.ideal_fragments(300 << 20) == 3


# --- the sampler on real files (tmp is on the root filesystem) ------------------------


def test_sampler_maps_real_files_and_respects_the_file_bound(tmp_path: Path) -> None:
    for d in range(5):
        sub = tmp_path / f"d{d}"
        sub.mkdir()
        for i in range(8):
            (sub / f"f{i}").write_bytes(os.urandom(70_000))
    (tmp_path / "tiny").write_bytes(b"x")
    os.sync()
    bounds = lin.Bounds(max_files=12, budget_s=30.0, min_bytes=64 << 10)
    fs = lin.sample_filesystem(str(tmp_path), bounds, rng=random.Random(3))
    if "FIEMAP unsupported" in fs.note:
        pytest.skip(f"tmp filesystem has no FIEMAP: {fs.note}")
    assert fs.files_sampled <= 12 and fs.files_sampled > 0
    assert "40 files >= 64 KiB eligible" in fs.note and "whole filesystem" in fs.note
    assert sum(fs.histogram.values()) <= fs.files_sampled
    assert fs.avg_extent_bytes > 0 and fs.fragments_max >= 1
    assert fs.max_files == 12


def test_sampler_does_not_favour_the_first_directories(tmp_path: Path) -> None:
    """With a tight file bound, the sample spreads over all directories, not the first walked."""
    for d in range(10):
        sub = tmp_path / f"d{d:02d}"
        sub.mkdir()
        for i in range(20):
            (sub / f"f{i}").write_bytes(b"\0" * 10)
    res = lin.walk(str(tmp_path), lin.Bounds(max_files=40, min_bytes=1), float("inf"), random.Random(7))
    assert res.complete and res.eligible == 200
    dirs = {Path(c.path).parent.name for c in res.uniform}
    assert len(dirs) >= 8


def test_sampler_keeps_the_largest_files(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"s{i}").write_bytes(b"\0" * 100)
    (tmp_path / "big").write_bytes(b"\0" * 100_000)
    res = lin.walk(str(tmp_path), lin.Bounds(max_files=8, min_bytes=1), float("inf"), random.Random(1))
    assert "big" in {Path(c.path).name for c in res.largest}


def test_real_file_matches_its_layout(tmp_path: Path) -> None:
    p = tmp_path / "one"
    p.write_bytes(os.urandom(256 << 10))
    os.sync()
    try:
        c = fragments_of(str(p))
    except OSError as exc:
        pytest.skip(f"no FIEMAP on tmp: {exc}")
    assert c.fragments >= 1 and c.mapped_bytes >= 256 << 10


def _files(root: Path, dirs: int = 4, per_dir: int = 6) -> None:
    for d in range(dirs):
        sub = root / f"d{d}"
        sub.mkdir()
        for i in range(per_dir):
            (sub / f"f{i}").write_bytes(os.urandom(70_000))
    os.sync()


def test_the_child_sampler_answers_what_the_thread_would(tmp_path: Path) -> None:
    """Same seed, same files: the child interpreter and this thread give the same sample."""
    _files(tmp_path)
    bounds = lin.Bounds(max_files=10, budget_s=30.0)
    here = lin.sample_filesystem(str(tmp_path), bounds, rng=random.Random(11))
    if "FIEMAP unsupported" in here.note:
        pytest.skip(f"tmp filesystem has no FIEMAP: {here.note}")
    there = lin.sample_in_child(str(tmp_path), bounds, seed=11)
    for msg in (here, there):
        msg.ClearField("duration_s")
    assert there == here
    assert there.files_sampled > 0 and "24 files >= 64 KiB eligible" in there.note


def test_the_child_reports_an_unwalkable_mountpoint_as_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        lin.sample_in_child(str(tmp_path / "gone"), lin.Bounds(budget_s=5.0))


def test_free_space_of_an_unsupported_filesystem_needs_no_child() -> None:
    facts = lin.free_space_in_child("/", "vfat", timeout=0.0)  # a child could not run in 0 s
    assert not facts.available and "not supported by vfat" in facts.reason


def test_without_a_child_interpreter_the_collector_samples_in_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files(tmp_path, dirs=2, per_dir=3)
    monkeypatch.setattr(lin.sys, "executable", "")
    spec = CollectionSpec(only=("fragmentation",), options={"frag_mountpoints": str(tmp_path), "frag_seed": 3})
    with run_collection(spec) as result:
        (fs,) = result.snapshot.fragmentation.filesystems
        assert "6 files >= 64 KiB eligible" in fs.note
        assert any("in-process" in w for _, w in result.warnings)


def test_the_walker_option_is_checked() -> None:
    spec = CollectionSpec(only=("fragmentation",), options={"frag_walker": "fork"})
    with run_collection(spec) as result:
        (status,) = [s for s in result.statuses if s.name == "fragmentation"]
        assert status.state == facts_pb2.CollectorStatus.ERROR and "frag_walker" in status.error


# --- which filesystems --------------------------------------------------------------


class P(NamedTuple):
    device: str
    mountpoint: str
    fstype: str


def test_targets_skip_pseudo_filesystems_and_list_network_ones() -> None:
    parts = [
        P("/dev/vda", "/", "ext4"),
        P("server:/x", "/mnt/nfs", "nfs4"),
        P("tank", "/tank", "zfs"),
        P("tmpfs", "/run", "tmpfs"),
        P("/dev/loop3", "/snap/core", "squashfs"),
    ]
    got = {t.mountpoint: t for t in linux_targets(parts, parts)}
    assert set(got) == {"/", "/mnt/nfs", "/tank"}
    assert got["/"].not_sampled == ""
    assert "network" in got["/mnt/nfs"].not_sampled
    assert "zpool" in got["/tank"].not_sampled


def test_overlay_root_is_sampled_with_a_note() -> None:
    all_parts = [P("overlay", "/", "overlay"), P("/dev/vdb", "/etc/hosts", "ext4")]
    targets = linux_targets([P("/dev/vdb", "/etc/hosts", "ext4")], all_parts)
    root = next(t for t in targets if t.mountpoint == "/")
    assert root.fstype == "overlay" and "backing filesystem" in root.note


def test_collector_runs_within_its_budget_on_this_machine() -> None:
    spec = CollectionSpec(only=("fragmentation",), options={"frag_budget_s": 0.5, "frag_max_files": 200})
    result = run_collection(spec)
    status = {s.name: s for s in result.statuses}["fragmentation"]
    assert status.state == facts_pb2.CollectorStatus.OK, status.error
    for fs in result.snapshot.fragmentation.filesystems:
        assert fs.max_files == 200 or fs.note.startswith(("network", "ZFS"))
    assert FragmentationCollector.budget_s >= 3.0


def test_open_by_names_the_processes_holding_a_file(tmp_path: Path) -> None:
    """Who holds a file open, from /proc/*/fd: others are named, the excluded (the agent) are not."""
    held = tmp_path / "held"
    held.write_bytes(b"x" * 4096)
    with held.open("rb") as fh:
        child = subprocess.Popen(["sleep", "30"], stdin=fh)  # the file is the child's stdin
    try:
        deadline = time.monotonic() + 5
        found, complete = lin.open_by({str(held)}, {os.getpid()}, deadline)
        assert complete and found == {str(held): [(child.pid, "sleep")]}
        assert lin.open_by({str(held)}, {os.getpid(), child.pid}, deadline) == ({}, True)
        assert lin.open_by({str(held)}, set(), time.monotonic() - 1) == ({}, False)  # out of time: says so
    finally:
        child.kill()
        child.wait()


# --- Windows ------------------------------------------------------------------------


def test_wmi_defrag_analysis_fixture() -> None:
    vols = win.parse_defrag_analysis_json((FIXTURES / "windows/defrag_analysis_wmi.json").read_text())
    c, d, e = vols
    assert (c.mountpoint, c.fstype, c.method) == ("C:", "NTFS", "wmi-defraganalysis")
    assert c.files_sampled == 228822 and c.files_fragmented == 1117
    assert c.fragments_mean == pytest.approx(1.03)
    assert c.vendor_fragmented_pct == 2
    assert c.free_space.available and c.free_space.free_extents == 4873
    assert c.free_space.largest_free_extent_bytes == 76310298624
    assert "returned 2: not supported" in d.note and d.fstype == "ReFS"
    assert "recommends defragmenting" in e.note and e.vendor_fragmented_pct == 38


def test_wmi_single_object_without_drive_letter() -> None:
    (vol,) = win.parse_defrag_analysis_json((FIXTURES / "windows/defrag_analysis_single.json").read_text())
    assert vol.mountpoint == "C:\\" and vol.files_fragmented == 1003


def test_wmi_garbage_is_a_clear_error() -> None:
    with pytest.raises(win.DefragParseError, match="not JSON"):
        win.parse_defrag_analysis_json("Access is denied.")
    assert win.parse_defrag_analysis_json("") == []


def test_defrag_text_english() -> None:
    raw = (FIXTURES / "windows/defrag_av_en.txt").read_bytes()
    fs = win.parse_defrag_text(win.decode_console(raw))
    assert fs.mountpoint == "C:\\" and fs.method == "defrag-output"
    assert fs.files_sampled == 285214 and fs.files_fragmented == 1117
    assert fs.fragments_mean == pytest.approx(1.03)
    assert fs.vendor_fragmented_pct == 2
    assert fs.free_space.free_extents == 4873
    assert fs.free_space.avg_free_extent_bytes == pytest.approx(29.32 * 2**20)
    assert fs.free_space.largest_free_extent_bytes == int(71.07 * 2**30)
    assert "English" in fs.note and "no defragmentation is needed" in fs.note


def test_defrag_text_german_in_the_oem_code_page() -> None:
    raw = (FIXTURES / "windows/defrag_av_de_cp850.txt").read_bytes()
    fs = win.parse_defrag_text(win.decode_console(raw), "D:\\")
    assert fs.mountpoint == "D:\\"
    assert fs.files_sampled == 1204877 and fs.files_fragmented == 48210
    assert fs.fragments_mean == pytest.approx(4.61)
    assert fs.vendor_fragmented_pct == 17
    assert fs.free_space.free_extents == 102331
    assert fs.free_space.largest_free_extent_bytes == int(1.25 * 2**30)
    assert "German" in fs.note and "recommends" in fs.note


def test_defrag_text_utf16() -> None:
    raw = (FIXTURES / "windows/defrag_av_en.txt").read_text().encode("utf-16")
    assert win.parse_defrag_text(win.decode_console(raw)).files_fragmented == 1117


@given(st.text(max_size=400))
def test_defrag_text_parser_fails_only_cleanly(text: str) -> None:
    with contextlib.suppress(win.DefragParseError):
        win.parse_defrag_text(text)


def test_defrag_numbers_by_locale() -> None:
    assert win.parse_number("1.234,5", True) == 1234.5
    assert win.parse_number("1,234.5", False) == 1234.5
    with pytest.raises(win.DefragParseError):
        win.parse_number("1.2.x", False)


# --- macOS --------------------------------------------------------------------------


def test_macos_apfs_facts_from_fixtures() -> None:
    info = mac.parse_diskutil_info((FIXTURES / "macos/diskutil_info.plist").read_bytes())
    assert (info.fstype, info.solid_state, info.device) == ("apfs", True, "/dev/disk3s1s1")
    snaps = mac.parse_local_snapshots((FIXTURES / "macos/tmutil_listlocalsnapshots.txt").read_text())
    assert snaps == 3
    fs = mac.apfs_facts(info, snaps)
    assert fs.media == "ssd" and fs.local_snapshots == 3 and fs.fstype == "apfs"
    assert "not meaningful" in fs.note and not fs.free_space.available
    assert "unknown" in mac.apfs_facts(info, None).note


def test_macos_bad_plist_is_a_clear_error() -> None:
    with pytest.raises(mac.MacParseError, match="not a plist"):
        mac.parse_diskutil_info(b"Could not find disk: /")
