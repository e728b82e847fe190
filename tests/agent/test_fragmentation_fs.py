"""Fragment counts on real ext4/XFS/btrfs images in loop devices, checked against ``filefrag``.

Needs root, a free loop device, and the mkfs tools (Debian: e2fsprogs, xfsprogs,
btrfs-progs); each missing piece skips with the reason. Every mount is undone in
``finally``: ``mount -o loop`` detaches its loop device on umount.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.collect import CollectionSpec, run_collection
from agent.collect.builtin import fragmentation_linux as lin
from agent.collect.fiemap import fragments_of, free_space
from tests.agent.fragfiles import mount_image, write_interleaved

pytestmark = pytest.mark.root

def _mount(fstype: str, tmp: Path, options: str = "") -> Iterator[Path]:
    return mount_image(fstype, tmp, options)


@pytest.fixture(params=["ext4", "xfs", "btrfs"])
def loopfs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    fstype: str = request.param
    for mnt in _mount(fstype, tmp_path):
        yield fstype, mnt


def make_fragmented(mnt: Path) -> list[Path]:
    """Interleaved appends with fsync (fragments), a partly filled fallocate, a sparse file."""
    chunk = os.urandom(64 << 10)
    paths = [mnt / f"interleaved{i}" for i in range(4)]
    write_interleaved(paths, [24] * 4, chunk)
    falloc = mnt / "falloc"
    fd = os.open(falloc, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, 8 << 20)
        os.pwrite(fd, chunk * 4, 2 << 20)
        os.fsync(fd)
    finally:
        os.close(fd)
    sparse = mnt / "sparse"
    fd = os.open(sparse, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for k in range(50):
            os.pwrite(fd, b"x" * 4096, k << 20)
    finally:
        os.close(fd)
    os.sync()  # no delalloc left: filefrag would count those, we skip them
    return [*paths, falloc, sparse]


def filefrag_count(path: Path) -> int:
    out = subprocess.run(["filefrag", str(path)], capture_output=True, text=True, check=True).stdout
    m = re.search(r": (\d+) extents? found", out)
    assert m, out
    return int(m.group(1))


def test_counts_match_filefrag(loopfs: tuple[str, Path]) -> None:
    _, mnt = loopfs
    paths = make_fragmented(mnt)
    ours = {p.name: fragments_of(str(p)).fragments for p in paths}
    theirs = {p.name: filefrag_count(p) for p in paths}
    assert ours == theirs
    # The interleaving did fragment the files: the test is about something.
    assert all(ours[f"interleaved{i}"] > 1 for i in range(4)), ours


def test_sampler_on_a_fragmented_filesystem(loopfs: tuple[str, Path]) -> None:
    _, mnt = loopfs
    make_fragmented(mnt)
    fs = lin.sample_filesystem(str(mnt), lin.Bounds(max_files=100, budget_s=30.0), rng=random.Random(1))
    assert fs.files_sampled == 6
    assert fs.files_fragmented >= 4 and fs.pct_files_fragmented > 50
    assert fs.fragments_max >= 5
    assert fs.flagged_unwritten >= 1  # the fallocated file
    assert {w.path for w in fs.worst} >= {str(mnt / f"interleaved{i}") for i in range(4)}
    assert "whole filesystem" in fs.note


def test_collector_end_to_end_with_free_space(loopfs: tuple[str, Path]) -> None:
    fstype, mnt = loopfs
    make_fragmented(mnt)
    spec = CollectionSpec(
        only=("fragmentation",),
        options={"frag_mountpoints": str(mnt), "frag_seed": 5, "frag_budget_s": 3.0},
    )
    result = run_collection(spec)
    (fs,) = result.snapshot.fragmentation.filesystems
    assert fs.mountpoint == str(mnt) and fs.fstype == fstype
    assert fs.files_sampled == 6
    if fstype in ("ext4", "xfs"):
        assert fs.free_space.available, fs.free_space.reason
        assert fs.free_space.free_extents >= 1
        assert fs.free_space.largest_free_extent_bytes > 0
    else:
        assert not fs.free_space.available
        assert "not supported by btrfs" in fs.free_space.reason


def test_getfsmap_agrees_with_e2freefrag(tmp_path: Path) -> None:
    if shutil.which("e2freefrag") is None:
        pytest.skip("e2freefrag not installed (Debian package e2fsprogs)")
    for mnt in _mount("ext4", tmp_path):
        make_fragmented(mnt)
        (mnt / "interleaved1").unlink()  # punch free space between the others
        (mnt / "interleaved3").unlink()
        os.sync()
        ours = free_space(str(mnt))
        dev = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True, text=True,
                             check=True).stdout.strip()
        out = subprocess.run(["e2freefrag", dev], capture_output=True, text=True, check=False).stdout
        m = re.search(r"Num\. free extent: (\d+)", out)
        big = re.search(r"Max\. free extent: (\d+) ?KB", out)
        if not (m and big):
            pytest.skip(f"e2freefrag gave no summary here: {out[:200]!r}")
        assert ours.free_extents == int(m.group(1))
        assert ours.largest_bytes == int(big.group(1)) * 1024


def test_btrfs_compressed_files_are_flagged_not_counted(tmp_path: Path) -> None:
    for mnt in _mount("btrfs", tmp_path, "compress=zstd"):
        text = b"".join(b"line %d of a compressible log file\n" % i for i in range(400_000))
        (mnt / "log.txt").write_bytes(text)
        os.sync()
        c = fragments_of(str(mnt / "log.txt"))
        assert c.encoded > 1
        fs = lin.sample_filesystem(str(mnt), lin.Bounds(budget_s=30.0), rng=random.Random(2))
        assert fs.flagged_encoded == 1 and fs.files_fragmented == 0 and fs.fragments_max == 0
