"""Writing files that come out fragmented, and loop images to write them on, for the fragmentation tests."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MIB = 1 << 20
MKFS = {
    "ext4": (["mkfs.ext4", "-q", "-F"], 64),
    "xfs": (["mkfs.xfs", "-q", "-f"], 320),  # xfsprogs >= 5.19 refuses less than 300 MiB
    "btrfs": (["mkfs.btrfs", "-q", "-f"], 128),
}
_FALLOC_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (linux/falloc.h)


def write_interleaved(paths: list[Path], rounds: list[int], chunk: bytes | None = None) -> None:
    """Appends interleaved with fsync: file i gets ``rounds[i]`` chunks, in pieces (fragments)."""
    chunk = chunk if chunk is not None else os.urandom(64 << 10)
    files = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below
    try:
        for r in range(max(rounds)):
            for f, n in zip(files, rounds, strict=True):
                if r < n:
                    f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
    finally:
        for f in files:
            f.close()


def why_no_loop(fstype: str) -> str | None:
    """Why a ``fstype`` loop image cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount, loop devices)"
    if shutil.which("filefrag") is None:
        return "filefrag not installed (Debian package e2fsprogs)"
    if shutil.which(MKFS[fstype][0][0]) is None:
        return f"{MKFS[fstype][0][0]} not installed"
    probe = subprocess.run(["losetup", "-f"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"no free loop device: {probe.stderr.strip() or 'losetup -f failed'}"
    return None


def mount_image(fstype: str, tmp: Path, options: str = "", size_mib: int = 0) -> Iterator[Path]:
    """A fresh ``fstype`` filesystem in a loop image, mounted until the generator is closed (skips when impossible)."""
    reason = why_no_loop(fstype)
    if reason:
        pytest.skip(reason)
    argv, least = MKFS[fstype]
    img, mnt = tmp / f"{fstype}.img", tmp / "mnt"
    mnt.mkdir()
    with open(img, "wb") as fh:
        fh.truncate(max(size_mib, least) << 20)
    subprocess.run([*argv, str(img)], check=True, capture_output=True)
    opts = "loop" + (f",{options}" if options else "")
    done = subprocess.run(["mount", "-o", opts, str(img), str(mnt)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {fstype} loop image here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)


def write_into_holes(mnt: Path, files: list[tuple[Path, int]], hole: int = 64 << 10, fill: Path | None = None) -> None:
    """Write ``files`` (path, size) so each lands in pieces of ``hole`` bytes, on an otherwise empty filesystem.

    A filler preallocated over all the free space (and a pad written over what is
    left) gets a hole punched every 2 * ``hole`` bytes; the files are then written one after the other and can only go
    into those holes; the filler is removed at the end. What remains are the files,
    each in ~size/``hole`` extents, and free space in pieces between them. With ``fill``,
    a file of that name is written last over nearly all the holes left, so that the
    free space ends up almost all in ``hole``-sized pieces.
    """
    filler = mnt / ".filler"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    pad = os.open(mnt / ".pad", os.O_WRONLY | os.O_CREAT, 0o644)  # created while there is room for an inode
    fd = os.open(filler, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = 0
        for step in (16 * MIB, 2 * hole):  # every free block, so that the files find nothing larger than a hole
            while True:
                try:
                    os.posix_fallocate(fd, size, step)
                except OSError:
                    break
                size += step
        _pad(pad)  # what fallocate would not take (XFS keeps some back from it)
        for off in range(0, size, 2 * hole):
            if libc.fallocate(fd, _FALLOC_PUNCH_HOLE, off, hole) != 0:
                err = ctypes.get_errno()
                pytest.skip(f"cannot punch holes on {mnt}: {os.strerror(err)}")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.close(pad)
    write_sequential(files)
    if fill is not None:
        st = os.statvfs(mnt)
        write_sequential([(fill, (st.f_bavail * st.f_frsize - 4 * MIB) // MIB * MIB)])
    filler.unlink()
    (mnt / ".pad").unlink()
    settle(mnt)


def settle(mnt: Path) -> None:
    """Let the filesystem finish freeing what was deleted: XFS frees a deleted file's blocks
    in the background (deferred inode inactivation), so the free-space map read a moment
    later would otherwise not be the one the test built. A freeze flushes that work."""
    import time

    os.sync()
    if shutil.which("fsfreeze"):
        subprocess.run(["fsfreeze", "-f", str(mnt)], check=False, capture_output=True)
        subprocess.run(["fsfreeze", "-u", str(mnt)], check=False, capture_output=True)
    deadline = time.monotonic() + 10
    last = os.statvfs(mnt).f_bfree
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = os.statvfs(mnt).f_bfree
        if now == last:
            return
        last = now


def _pad(fd: int) -> None:
    """Fill what free space is left with written data, until the filesystem says ENOSPC."""
    for step in (MIB, 4096):
        block = b"\0" * step
        while True:
            try:
                os.write(fd, block)
                os.fsync(fd)
            except OSError:
                break


def write_sequential(files: list[tuple[Path, int]]) -> None:
    """Each file written whole, one after the other, in 1 MiB writes (contiguous on a fresh filesystem)."""
    block = os.urandom(MIB)
    for path, size in files:
        with open(path, "wb") as fh:
            for off in range(0, size, MIB):
                fh.write(block[: min(MIB, size - off)])
            fh.flush()
            os.fsync(fh.fileno())
    os.sync()  # no delalloc left: filefrag would count those, the sampler skips them
