"""Linux fragmentation: a bounded, unbiased sample of files per filesystem, mapped with FIEMAP.

The walk dominates the cost (FIEMAP of 2,000 warm files takes ~50 ms; walking /usr
takes seconds), so the bounds are on the walk: a time budget and a file count. A
depth-first walk cut short by a budget only sees the first subtrees, so the walk picks
the next directory at random from everything discovered so far, and two pools are
kept while walking: a uniform reservoir (Algorithm R) of eligible files and a heap of
the largest ones. Per-file shares (% files fragmented, mean/p50/p95, histogram) come
from the uniform pool only; byte-weighted figures, the maximum and the worst files use
the whole sample, because a few huge fragmented files (databases, VM images, backups)
are what hurts and the uniform pool would rarely hold them.
"""

from __future__ import annotations

import errno
import heapq
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.collect import fiemap
from protos import facts_pb2

# Filesystems with no extents of their own (or whose walk would hit the network).
SKIP_FSTYPES = frozenset(
    {"proc", "sysfs", "tmpfs", "devtmpfs", "devpts", "squashfs", "overlay", "autofs", "ramfs",
     "cgroup", "cgroup2", "nfs", "nfs4", "cifs", "smb3", "smbfs", "zfs", "iso9660", "fuseblk"}
)
FREE_SPACE_FSTYPES = frozenset({"ext4", "xfs"})
# An extent-based filesystem caps one extent (ext4: 128 MiB), so a file in pieces of
# that size reads as well as it can; only more pieces than this count as fragmented.
IDEAL_EXTENT_BYTES = 128 << 20
WORST_FILES = 10
DEFAULT_MIN_BYTES = 64 << 10  # smaller files can hardly fragment and would dilute the shares
_WALK_SHARE = 0.75  # of the budget; the rest is for FIEMAP


@dataclass(frozen=True)
class Bounds:
    max_files: int = 4000
    budget_s: float = 3.0
    min_bytes: int = DEFAULT_MIN_BYTES


@dataclass(frozen=True, order=True)
class Candidate:
    size: int
    path: str
    ino: int


@dataclass
class WalkResult:
    uniform: list[Candidate] = field(default_factory=list)
    largest: list[Candidate] = field(default_factory=list)  # min-heap by size
    entries: int = 0
    eligible: int = 0
    complete: bool = False
    errors: Counter[str] = field(default_factory=Counter)


def walk(root: str, bounds: Bounds, deadline: float, rng: random.Random) -> WalkResult:
    """Sample regular files under ``root`` on its filesystem only, until done or ``deadline``."""
    n_large = bounds.max_files // 4
    n_uniform = bounds.max_files - n_large
    res = WalkResult()
    root_st = os.stat(root)
    dev = root_st.st_dev
    seen_dirs = {root_st.st_ino}
    frontier = [root]
    while frontier:
        if time.monotonic() >= deadline:
            return res
        i = rng.randrange(len(frontier))
        frontier[i], frontier[-1] = frontier[-1], frontier[i]
        try:
            it = os.scandir(frontier.pop())
        except OSError as exc:
            res.errors[errno.errorcode.get(exc.errno or 0, "error")] += 1
            continue
        with it:
            for entry in it:
                res.entries += 1
                try:
                    if entry.is_dir(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        if st.st_dev == dev and st.st_ino not in seen_dirs:
                            seen_dirs.add(st.st_ino)
                            frontier.append(entry.path)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    res.errors[errno.errorcode.get(exc.errno or 0, "error")] += 1
                    continue
                if st.st_dev != dev or st.st_size < bounds.min_bytes:
                    continue
                cand = Candidate(st.st_size, entry.path, st.st_ino)
                res.eligible += 1
                if len(res.uniform) < n_uniform:
                    res.uniform.append(cand)
                else:
                    j = rng.randrange(res.eligible)
                    if j < n_uniform:
                        res.uniform[j] = cand
                if n_large:
                    if len(res.largest) < n_large:
                        heapq.heappush(res.largest, cand)
                    elif cand.size > res.largest[0].size:
                        heapq.heapreplace(res.largest, cand)
    res.complete = True
    return res


@dataclass(frozen=True)
class Mapped:
    cand: Candidate
    count: fiemap.FragmentCount
    uniform: bool


Mapper = Callable[[str], fiemap.FragmentCount]


def ideal_fragments(size: int) -> int:
    return max(1, math.ceil(size / IDEAL_EXTENT_BYTES))


def bucket(fragments: int) -> str:
    if fragments <= 1:
        return "1"
    if fragments <= 3:
        return "2-3"
    if fragments <= 9:
        return "4-9"
    return "10-99" if fragments <= 99 else "100+"


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def sample_filesystem(
    mountpoint: str,
    bounds: Bounds,
    *,
    rng: random.Random | None = None,
    mapper: Mapper = fiemap.fragments_of,
) -> facts_pb2.FsFragmentation:
    """Walk and map one filesystem within ``bounds``; never raises for one bad file."""
    rng = rng or random.Random()
    started = time.monotonic()
    deadline = started + bounds.budget_s
    out = facts_pb2.FsFragmentation(
        mountpoint=mountpoint, method="fiemap", max_files=bounds.max_files, budget_s=bounds.budget_s
    )
    walked = walk(mountpoint, bounds, started + bounds.budget_s * _WALK_SHARE, rng)
    in_uniform = {(c.ino, c.path) for c in walked.uniform}
    sample = {(c.ino, c.path): c for c in (*walked.uniform, *walked.largest)}
    order = list(sample.values())
    rng.shuffle(order)  # if FIEMAP runs out of time, what was mapped is still unbiased
    mapped: list[Mapped] = []
    errors = Counter(walked.errors)
    skipped = 0
    unsupported = ""
    for cand in order:
        if time.monotonic() >= deadline:
            break
        try:
            count = mapper(cand.path)
        except fiemap.ExtentMapError:
            errors["bad-extent-map"] += 1
            continue
        except OSError as exc:
            if exc.errno in fiemap.UNSUPPORTED_ERRNOS and not mapped:
                unsupported = f"FIEMAP unsupported here ({os.strerror(exc.errno or 0)})"
                break
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                skipped += 1  # gone or replaced since the walk saw it
            else:
                errors[errno.errorcode.get(exc.errno or 0, "error")] += 1
            continue
        if count.fragments == 0:
            skipped += 1  # nothing positioned yet (all delalloc) or no data at all
            continue
        mapped.append(Mapped(cand, count, (cand.ino, cand.path) in in_uniform))
    _summarise(out, mapped)
    out.skipped = skipped
    out.errors = sum(errors.values())
    notes = [
        f"walked {walked.entries} entries ({'whole filesystem' if walked.complete else 'cut by budget'}),"
        f" {walked.eligible} files >= {bounds.min_bytes // 1024} KiB eligible",
        f"sample: {len(walked.uniform)} uniform + {len(walked.largest)} largest;"
        " per-file shares from the uniform part, byte shares and worst files from all",
    ]
    if errors:
        notes.append("errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())))
    if unsupported:
        notes.append(unsupported)
    out.note = "; ".join(notes)
    out.duration_s = time.monotonic() - started
    return out


def _summarise(out: facts_pb2.FsFragmentation, mapped: list[Mapped]) -> None:
    counted = []
    for m in mapped:
        if m.count.encoded:
            out.flagged_encoded += 1  # compression boundaries, not layout: not counted
            continue
        if m.count.unwritten:
            out.flagged_unwritten += 1
        counted.append(m)
    out.files_sampled = len(mapped)
    if not counted:
        return
    fragmented = [m for m in counted if m.count.fragments > ideal_fragments(m.cand.size)]
    out.files_fragmented = len(fragmented)
    per_file = [m for m in counted if m.uniform] or counted
    per_file_frag = sorted(m.count.fragments for m in per_file)
    n_frag = sum(1 for m in per_file if m.count.fragments > ideal_fragments(m.cand.size))
    out.pct_files_fragmented = 100.0 * n_frag / len(per_file)
    out.fragments_mean = sum(per_file_frag) / len(per_file_frag)
    out.fragments_p50 = percentile(per_file_frag, 50)
    out.fragments_p95 = percentile(per_file_frag, 95)
    for value in per_file_frag:
        out.histogram[bucket(value)] += 1
    total_bytes = sum(m.cand.size for m in counted)
    if total_bytes:
        out.pct_bytes_in_fragmented = 100.0 * sum(m.cand.size for m in fragmented) / total_bytes
    mapped_bytes = sum(m.count.mapped_bytes for m in counted)
    out.avg_extent_bytes = mapped_bytes / sum(m.count.fragments for m in counted)
    out.fragments_max = max(m.count.fragments for m in counted)
    for m in heapq.nlargest(WORST_FILES, counted, key=lambda m: (m.count.fragments, m.cand.size)):
        if m.count.fragments > 1:
            out.worst.add(path=m.cand.path, size=m.cand.size, fragments=m.count.fragments)


def free_space_facts(mountpoint: str, fstype: str) -> facts_pb2.FreeSpaceFragmentation:
    """GETFSMAP where the filesystem has a reverse map and we may read it, else why not."""
    if fstype not in FREE_SPACE_FSTYPES:
        return facts_pb2.FreeSpaceFragmentation(
            available=False, reason=f"GETFSMAP is not supported by {fstype or 'this filesystem'}"
        )
    try:
        fs = fiemap.free_space(mountpoint)
    except PermissionError:
        return facts_pb2.FreeSpaceFragmentation(available=False, reason="needs CAP_SYS_ADMIN")
    except OSError as exc:
        if exc.errno in fiemap.UNSUPPORTED_ERRNOS:
            reason = f"GETFSMAP is not supported here ({os.strerror(exc.errno or 0)}; kernel >= 4.12 needed)"
        else:
            reason = f"GETFSMAP failed: {exc}"
        return facts_pb2.FreeSpaceFragmentation(available=False, reason=reason)
    except fiemap.ExtentMapError as exc:
        return facts_pb2.FreeSpaceFragmentation(available=False, reason=f"GETFSMAP answer rejected: {exc}")
    return facts_pb2.FreeSpaceFragmentation(
        available=True,
        free_extents=fs.free_extents,
        avg_free_extent_bytes=fs.avg_bytes,
        largest_free_extent_bytes=fs.largest_bytes,
        pct_free_in_small_extents=fs.pct_small,
    )


def media_of(path: str) -> str:
    """"ssd" or "rotational" for the block device under ``path``; "" when it cannot be told."""
    try:
        st_dev = os.stat(path).st_dev
    except OSError:
        return ""
    base = f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}"
    for candidate in (f"{base}/queue/rotational", f"{base}/../queue/rotational"):
        try:
            with open(candidate) as fh:
                value = fh.read().strip()
        except OSError:
            continue
        return {"0": "ssd", "1": "rotational"}.get(value, "")
    return ""

