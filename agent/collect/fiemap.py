"""Linux extent maps from pure Python: ``FS_IOC_FIEMAP`` per file, ``FS_IOC_GETFSMAP`` for free space.

Layouts come from the kernel UAPI headers ``linux/fiemap.h`` and ``linux/fsmap.h``.
What the kernel hands back is treated as untrusted input: counts are checked against
the buffer, a map that does not advance ends the loop, and every number is bounded.

Fragments are counted the way ``filefrag`` (e2fsprogs ``misc/filefrag.c``) counts them:
an extent starts a new fragment unless it continues the previous one physically,
either densely (``phys == prev_phys + prev_len``) or across a hole with the same gap
logically and physically (``phys == prev_phys + (logical - prev_logical)``); an extent
at logical offset 0 never adds one. Our policy on top of filefrag's:

* DELALLOC/UNKNOWN extents have no position yet (physical 0 before writeback), so
  they are skipped rather than compared;
* UNWRITTEN (preallocated, zero) extents are counted exactly as filefrag counts them
  and the file is flagged. Dropping them like holes was tried: on XFS, speculative
  preallocation sits between the written blocks of a sparse file, so without it the
  written blocks look scattered (49 fragments where filefrag, rightly, says 2);
* ENCODED (compressed) or DATA_ENCRYPTED extents are cut at encoding boundaries, not
  by layout (btrfs zstd gives one extent per 128 KiB), so such files are flagged and
  their count is not to be trusted as fragmentation.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import stat
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FS_IOC_GETFSMAP = 0xC0C0583B  # _IOWR('X', 59, struct fsmap_head)

FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_ENCODED = 0x8
FIEMAP_EXTENT_DATA_ENCRYPTED = 0x80
FIEMAP_EXTENT_UNWRITTEN = 0x800
FIEMAP_EXTENT_SHARED = 0x2000

_HEAD = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQ16xI12x")  # logical, physical, length, reserved, flags, reserved
_U64_MAX = 2**64 - 1
DEFAULT_BATCH = 256
DEFAULT_MAX_EXTENTS = 1 << 17

FMR_OF_SPECIAL_OWNER = 0x10
FMR_OF_LAST = 0x20
FMR_OWN_FREE = 1
_FSMAP_HEAD = struct.Struct("=IIII48x")  # iflags, oflags, count, entries, reserved[6]
_FSMAP_REC = struct.Struct("=IIQQQQ24x")  # device, flags, physical, owner, offset, length
_SMALL_FREE = 1 << 20

# errnos meaning "this filesystem (or file type) has no extent map", not "this file failed".
UNSUPPORTED_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS})


class ExtentMapError(ValueError):
    """The kernel (or a caller) produced an extent map that makes no sense."""


@dataclass(frozen=True)
class Extent:
    logical: int
    physical: int
    length: int
    flags: int


@dataclass(frozen=True)
class FragmentCount:
    """One file's extent map, summarised."""

    extents: int  # raw extents returned
    fragments: int  # physically discontiguous runs of positioned extents (filefrag's count)
    mapped_bytes: int  # bytes in the extents counted
    delalloc: int  # extents without a position yet (skipped)
    unwritten: int  # preallocated extents (counted, file flagged)
    encoded: int  # compressed/encrypted extents (file flagged)
    shared: int  # reflinked/snapshot-shared extents (noted only)
    truncated: bool = False  # stopped at the extent cap: fragments is a lower bound


def count_fragments(extents: Iterable[Extent], *, truncated: bool = False) -> FragmentCount:
    """Fragments as ``filefrag`` counts them, with the skip/flag policy in the module doc."""
    total = fragments = mapped = delalloc = unwritten = encoded = shared = 0
    prev: Extent | None = None
    for ext in extents:
        if ext.length < 0 or ext.logical < 0 or ext.physical < 0:
            raise ExtentMapError(f"negative field in {ext!r}")
        total += 1
        if ext.flags & FIEMAP_EXTENT_SHARED:
            shared += 1
        if ext.flags & (FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED):
            encoded += 1
        if ext.flags & (FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_UNKNOWN):
            delalloc += 1
            continue
        if ext.flags & FIEMAP_EXTENT_UNWRITTEN:
            unwritten += 1
        mapped += ext.length
        if prev is None:
            fragments += 1  # filefrag: the first counted extent is one fragment wherever it is
        else:
            dense = prev.physical + prev.length
            same_gap = prev.physical + (ext.logical - prev.logical)
            if ext.logical != 0 and ext.physical not in (dense, same_gap):
                fragments += 1
        prev = ext
    return FragmentCount(total, fragments, mapped, delalloc, unwritten, encoded, shared, truncated)


def parse_fiemap(buf: bytes | bytearray, requested: int) -> tuple[list[Extent], int]:
    """Extents in one FIEMAP answer and the mapped count; raises ExtentMapError on nonsense."""
    if len(buf) < _HEAD.size:
        raise ExtentMapError(f"fiemap answer of {len(buf)} bytes is shorter than its header")
    mapped = _HEAD.unpack_from(buf)[3]
    if mapped > requested or _HEAD.size + mapped * _EXTENT.size > len(buf):
        raise ExtentMapError(f"fiemap says {mapped} extents mapped, {requested} were asked for")
    out = []
    for i in range(mapped):
        logical, physical, length, flags = _EXTENT.unpack_from(buf, _HEAD.size + i * _EXTENT.size)
        out.append(Extent(logical, physical, length, flags))
    return out, mapped


def file_extents(
    fd: int, *, batch: int = DEFAULT_BATCH, max_extents: int = DEFAULT_MAX_EXTENTS, sync: bool = False
) -> tuple[list[Extent], bool]:
    """Every extent of the open file ``fd`` (FIEMAP in batches); True when capped.

    ``sync`` (FIEMAP_FLAG_SYNC) forces writeback of the file first: off by default,
    because on a customer's busy server that is a write storm we would cause.
    """
    if batch <= 0:
        raise ValueError("batch must be positive")
    buf = bytearray(_HEAD.size + batch * _EXTENT.size)
    start = 0
    extents: list[Extent] = []
    while len(extents) < max_extents:
        _HEAD.pack_into(buf, 0, start, _U64_MAX - start, FIEMAP_FLAG_SYNC if sync else 0, 0, batch, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        got, mapped = parse_fiemap(buf, batch)
        if mapped == 0:
            return extents, False
        extents.extend(got)
        last = got[-1]
        if last.flags & FIEMAP_EXTENT_LAST:
            return extents, False
        nxt = last.logical + last.length
        if nxt <= start or nxt >= _U64_MAX:
            raise ExtentMapError(f"fiemap did not advance past logical offset {start}")
        start = nxt
    return extents[:max_extents], True


def open_for_map(path: str) -> int:
    """Open a file read-only without following links, blocking, or touching its atime."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        # O_NOATIME is only allowed on files we own (or with CAP_FOWNER).
        return os.open(path, flags)


def open_verified(path: str, dev: int, ino: int) -> int:
    """Open for mapping the very file a walk saw as ``(dev, ino)``, or raise ENXIO.

    A path seen during a walk can be changed before it is opened: a user who owns a
    directory on it can swap that directory for a symlink, and O_NOFOLLOW guards only
    the last component. So the path is first opened with O_PATH, which opens nothing
    (no device acts on it, no FIFO blocks); the file behind it must be a regular file
    with the walk's device and inode; only then is that same file opened for reading,
    through ``/proc/self/fd``. Without /proc, it is opened by path and checked after.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    o_path = getattr(os, "O_PATH", 0)  # Linux
    if not o_path:
        fd = open_for_map(path)
    else:
        pfd = os.open(path, o_path | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _check_identity(pfd, dev, ino, path)
            try:
                fd = os.open(f"/proc/self/fd/{pfd}", flags | os.O_NOATIME)
            except PermissionError:
                fd = os.open(f"/proc/self/fd/{pfd}", flags)
            except FileNotFoundError:  # no /proc mounted
                fd = open_for_map(path)
        finally:
            os.close(pfd)
    try:
        _check_identity(fd, dev, ino, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_identity(fd: int, dev: int, ino: int, path: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (dev, ino):
        raise OSError(errno.ENXIO, "not the regular file the walk saw (replaced since)", path)


def fragments_of_fd(fd: int, *, batch: int = DEFAULT_BATCH, max_extents: int = DEFAULT_MAX_EXTENTS) -> FragmentCount:
    """Count the fragments of the regular file open as ``fd``."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.ENXIO, "not a regular file")
    extents, truncated = file_extents(fd, batch=batch, max_extents=max_extents)
    return count_fragments(extents, truncated=truncated)


def fragments_of(path: str, *, batch: int = DEFAULT_BATCH, max_extents: int = DEFAULT_MAX_EXTENTS) -> FragmentCount:
    """Open ``path`` (a regular file) and count its fragments."""
    fd = open_for_map(path)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENXIO, "not a regular file", path)
        extents, truncated = file_extents(fd, batch=batch, max_extents=max_extents)
    finally:
        os.close(fd)
    return count_fragments(extents, truncated=truncated)


# --- free space ---------------------------------------------------------------------


@dataclass(frozen=True)
class FreeSpace:
    free_extents: int
    free_bytes: int
    largest_bytes: int
    small_bytes: int  # free bytes in extents < 1 MiB
    covered_pct: float = 100.0  # of the filesystem's blocks the map was read over
    fs_free_bytes: int = 0  # the filesystem's free bytes as statfs counts them (0: not asked)

    @property
    def partial(self) -> bool:
        return self.covered_pct < 100.0

    @property
    def avg_bytes(self) -> float:
        return self.free_bytes / self.free_extents if self.free_extents else 0.0

    @property
    def pct_small(self) -> float:
        return 100.0 * self.small_bytes / self.free_bytes if self.free_bytes else 0.0


def summarise_free(records: Iterable[tuple[int, int, int]]) -> FreeSpace:
    """(device, physical, length) free records → extents, merging physically adjacent ones."""
    runs: list[int] = []
    prev_dev, prev_end = -1, -1
    for dev, phys, length in sorted(records):
        if length <= 0:
            continue
        if runs and dev == prev_dev and phys == prev_end:
            runs[-1] += length
        else:
            runs.append(length)
        prev_dev, prev_end = dev, phys + length
    return FreeSpace(
        free_extents=len(runs),
        free_bytes=sum(runs),
        largest_bytes=max(runs, default=0),
        small_bytes=sum(r for r in runs if r < _SMALL_FREE),
    )


def parse_fsmap(buf: bytes | bytearray, requested: int) -> list[tuple[int, int, int, int, int, int]]:
    """(device, flags, physical, owner, offset, length) records in one GETFSMAP answer."""
    if len(buf) < _FSMAP_HEAD.size + 2 * _FSMAP_REC.size:
        raise ExtentMapError("fsmap answer shorter than its header")
    entries = _FSMAP_HEAD.unpack_from(buf)[3]
    base = _FSMAP_HEAD.size + 2 * _FSMAP_REC.size
    if entries > requested or base + entries * _FSMAP_REC.size > len(buf):
        raise ExtentMapError(f"fsmap says {entries} records, {requested} were asked for")
    out = []
    for i in range(entries):
        out.append(_FSMAP_REC.unpack_from(buf, base + i * _FSMAP_REC.size))
    return out


def free_space(
    mountpoint: str, *, batch: int = 512, max_calls: int = 10_000, deadline: float | None = None
) -> FreeSpace:
    """Free-space extents of a mounted ext4/XFS via GETFSMAP (needs CAP_SYS_ADMIN).

    The map is read in address order; when ``deadline`` (``time.monotonic()``) passes or
    ``max_calls`` answers were read before its end, what was read so far is summarised
    with ``covered_pct`` below 100: the share of the filesystem's blocks the records
    reached. ``fs_free_bytes`` (statfs) lets a reader bound the whole from that part.
    Raises OSError as the kernel reports it: EPERM without the capability, ENOTTY or
    EOPNOTSUPP where the filesystem has no reverse map (btrfs, tmpfs).
    """
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstatvfs(fd)
        records, reached = _free_records(fd, batch, max_calls, deadline)
    finally:
        os.close(fd)
    whole = summarise_free(records)
    covered = 100.0
    if reached is not None:
        size = st.f_blocks * st.f_frsize
        covered = min(99.9, 100.0 * reached / size) if size else 0.0
    return dataclasses.replace(whole, covered_pct=covered, fs_free_bytes=st.f_bfree * st.f_frsize)


def _free_records(
    fd: int, batch: int, max_calls: int, deadline: float | None
) -> tuple[list[tuple[int, int, int]], int | None]:
    """The free records, and None when the map was read to its end, else the physical address reached."""
    base = _FSMAP_HEAD.size + 2 * _FSMAP_REC.size
    buf = bytearray(base + batch * _FSMAP_REC.size)
    low: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    # Length 0 in the high key, as xfs_io sends it: XFS rejects anything else (EINVAL).
    high = (0xFFFFFFFF, 0xFFFFFFFF, _U64_MAX, _U64_MAX, _U64_MAX, 0)
    free: list[tuple[int, int, int]] = []
    for call in range(max_calls):
        if call and deadline is not None and time.monotonic() >= deadline:
            return free, low[2] + low[5]
        buf[:] = bytes(len(buf))
        _FSMAP_HEAD.pack_into(buf, 0, 0, 0, batch, 0)
        _FSMAP_REC.pack_into(buf, _FSMAP_HEAD.size, *low)
        _FSMAP_REC.pack_into(buf, _FSMAP_HEAD.size + _FSMAP_REC.size, *high)
        fcntl.ioctl(fd, FS_IOC_GETFSMAP, buf, True)
        records = parse_fsmap(buf, batch)
        if not records:
            return free, None
        for dev, flags, phys, owner, _offset, length in records:
            if flags & FMR_OF_SPECIAL_OWNER and owner == FMR_OWN_FREE:
                free.append((dev, phys, length))
        if records[-1][1] & FMR_OF_LAST:
            return free, None
        # The kernel resumes after the record passed as the low key (fsmap_advance).
        if records[-1] == low:
            raise ExtentMapError("fsmap did not advance")
        low = records[-1]
    return free, low[2] + low[5]
