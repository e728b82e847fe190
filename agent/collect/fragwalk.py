"""One filesystem's fragmentation sample — walk, FIEMAP, summary — in the standard library only.

The walk dominates the cost (FIEMAP of 2,000 warm files takes ~50 ms; walking /usr
takes seconds), so the bounds are on the walk: a time budget and a file count. A
depth-first walk cut short by a budget only sees the first subtrees, so the walk picks
the next directory at random from everything discovered so far, and two pools are
kept while walking: a uniform reservoir (Algorithm R) of eligible files and a heap of
the largest ones.

Which figure comes from which pool. The largest files are in the sample on purpose:
a few huge fragmented files (databases, VM images, backups) are what hurts, and a
uniform sample would rarely hold them. But they are not typical, so a figure that
claims to describe the filesystem must not count them like the others (it did: on a
healthy VM, large files in two extents put 36-47 % of the sample's bytes "in
fragmented files" while the 95th percentile file had one fragment).

* Per-file figures (% files fragmented, mean/p50/p95, histogram) come from the
  uniform pool only: a file is drawn there with the same chance as any other.
* Byte-weighted figures (% bytes in fragmented files, average extent size) are a
  stratified estimate: the largest files seen are one stratum, taken whole (weight
  1 each), and the uniform files that are not among them are a uniform sample of
  the rest (weight = files in the rest / those mapped). Each mapped file counts with
  its stratum's size over the files mapped in it, so both strata come out at their
  true share; when everything eligible was mapped every weight is 1. With the
  uniform pool alone these figures would hang on whether a rare huge file happened
  to be drawn.
* The maximum, the worst files and ``files_fragmented`` (a count, not an estimate)
  use the whole sample.

What "fragmented" means. Fragments are counted as ``filefrag`` counts them (see
``fiemap``), and a file has ``ideal_fragments`` = ceil(size / 128 MiB) at best. A
file counts as *fragmented* when it has more fragments than that **and** its
fragments average less than ``FRAGMENTED_EXTENT_BYTES`` (1 MiB) of data. Why the
second condition: a 98 MB file in two 49 MB pieces costs one extra seek per 98 MB
read, nothing anyone can measure, yet "more than ideal" alone calls it fragmented.
The cost of a fragment is one positioning (~8 ms on a rotational disk, which reads
~1 MiB in that time; request overhead on an SSD); below ~1 MiB per piece it costs
more than moving the data does, so reading such a file takes at least twice as
long as it should. That is the same line the free-space figure draws
(``pct_free_in_small_extents``: extents < 1 MiB). It is stricter than ``e4defrag
-c``, which scores extra extents per block and calls up to about one extra extent
per 100 KiB "no problem". Fragment counts themselves (mean, p50, p95, max,
histogram, worst files) stay filefrag's numbers.

A file in ``MANY_FRAGMENTS`` (10,000) pieces or more, over twice its ideal, counts
as fragmented however large the pieces: a 2 TiB backup file in 50,000 extents of
~40 MiB reads at near full speed, but every extent is a record the filesystem must
look up, cache and, on copy-on-write filesystems (ReFS, btrfs, XFS with reflinks),
reference-count. That metadata work is the kernel CPU and memory of the ReFS case,
and it grows with the count, not with the extent size.

Why a module of its own, free of protobuf and psutil: the walk is CPU-bound Python.
In a collector thread it holds the GIL through the very windows in which the other
collectors wait to take their second reading, and it walks at half speed for it
(measured on a 2-core machine: ~45k entries in 0.375 s in the thread, ~90k in a child
process, while ``processes`` took 0.48 s instead of 0.30 s). So the fragmentation
collector runs ``sample`` in a child interpreter (``python -I -S``) that imports only
this module and ``fiemap``; ``child_main`` is that child's entry point. The result is
a plain dict of ``FsFragmentation`` fields, turned into the message by the caller.
"""

from __future__ import annotations

import errno
import heapq
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.collect import fiemap

__all__ = [
    "DEFAULT_MIN_BYTES",
    "FRAGMENTED_EXTENT_BYTES",
    "FREE_SPACE_FSTYPES",
    "IDEAL_EXTENT_BYTES",
    "MANY_FRAGMENTS",
    "WORST_FILES",
    "Bounds",
    "Candidate",
    "Mapped",
    "Mapper",
    "Strata",
    "WalkResult",
    "bucket",
    "child_main",
    "free_space_fields",
    "ideal_fragments",
    "is_fragmented",
    "percentile",
    "printable_path",
    "sample",
    "stratum_weights",
    "summarise",
    "walk",
]

# An extent-based filesystem caps one extent (ext4: 128 MiB), so a file in pieces of
# that size reads as well as it can; only more pieces than this count as fragmented.
IDEAL_EXTENT_BYTES = 128 << 20
# ...and only when they are this small on average (the module doc says why 1 MiB),
FRAGMENTED_EXTENT_BYTES = 1 << 20
# ...or when there are this many of them, whatever their size (the module doc says why).
MANY_FRAGMENTS = 10_000
WORST_FILES = 10
DEFAULT_MIN_BYTES = 64 << 10  # smaller files can hardly fragment and would dilute the shares
FREE_SPACE_FSTYPES = frozenset({"ext4", "xfs"})  # the ones with a reverse map (GETFSMAP)
_WALK_SHARE = 0.75  # of the budget; the rest is for FIEMAP
_CLOCK_EVERY = 1024  # entries read in one directory between looks at the clock
# In a child: the pid of the agent that started it. When the agent is gone (it was
# interrupted, or gave the collection up and exited), the walk stops early: nobody
# will read its answer, and it should not go on reading the disk as root.
_parent: int | None = None


def _stop_now(deadline: float) -> bool:
    return time.monotonic() >= deadline or (_parent is not None and os.getppid() != _parent)


def printable_path(path: str) -> str:
    """A path as text that any UTF-8 consumer takes: bytes that are not UTF-8 (a file
    name is any bytes) become backslash escapes instead of lone surrogates."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
    dev: int = 0  # the filesystem's device number


def walk(root: str, bounds: Bounds, deadline: float, rng: random.Random) -> WalkResult:
    """Sample regular files under ``root`` on its filesystem only, until done or ``deadline``.

    Each directory is opened once and its entries are stat'ed relative to it
    (``fstatat``), not by full path: the kernel does not resolve the path again for
    every entry, which made the walk ~12 % faster on a 440k-entry root filesystem.
    """
    n_large = bounds.max_files // 4
    n_uniform = bounds.max_files - n_large
    res = WalkResult()
    root_st = os.stat(root)
    dev = res.dev = root_st.st_dev
    seen_dirs = {root_st.st_ino}
    frontier = [root]
    while frontier:
        if _stop_now(deadline):
            return res
        i = rng.randrange(len(frontier))
        frontier[i], frontier[-1] = frontier[-1], frontier[i]
        folder = frontier.pop()
        prefix = folder if folder.endswith("/") else folder + "/"
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            res.errors[errno.errorcode.get(exc.errno or 0, "error")] += 1
            continue
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    res.entries += 1
                    if res.entries % _CLOCK_EVERY == 0 and _stop_now(deadline):
                        return res  # a huge directory: the rest of it is not read
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            if st.st_dev == dev and st.st_ino not in seen_dirs:
                                seen_dirs.add(st.st_ino)
                                frontier.append(prefix + entry.name)
                            continue
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except OSError as exc:
                        res.errors[errno.errorcode.get(exc.errno or 0, "error")] += 1
                        continue
                    if st.st_dev != dev or st.st_size < bounds.min_bytes:
                        continue
                    _offer(res, Candidate(st.st_size, prefix + entry.name, st.st_ino), n_uniform, n_large, rng)
        except OSError as exc:  # reading the directory failed part-way
            res.errors[errno.errorcode.get(exc.errno or 0, "error")] += 1
        finally:
            os.close(fd)
    res.complete = True
    return res


def _offer(res: WalkResult, cand: Candidate, n_uniform: int, n_large: int, rng: random.Random) -> None:
    """One eligible file into the uniform reservoir (Algorithm R) and the largest-files heap."""
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


@dataclass(frozen=True)
class Mapped:
    cand: Candidate
    count: fiemap.FragmentCount
    uniform: bool  # drawn into the uniform reservoir
    largest: bool  # among the largest files the walk saw


@dataclass(frozen=True)
class Strata:
    """How many eligible files the walk saw in each stratum (module doc: byte figures)."""

    largest: int  # the largest files, all of them in the sample
    rest: int  # every other eligible file; the sample holds a uniform part of them


Mapper = Callable[[int], fiemap.FragmentCount]  # an open regular file → its fragments


def ideal_fragments(size: int) -> int:
    return max(1, math.ceil(size / IDEAL_EXTENT_BYTES))


def is_fragmented(size: int, count: fiemap.FragmentCount) -> bool:
    """More fragments than ``ideal_fragments`` and under ``FRAGMENTED_EXTENT_BYTES`` each on average;
    or at least ``MANY_FRAGMENTS`` of them and more than twice the ideal (the module doc says why)."""
    n, ideal = count.fragments, ideal_fragments(size)
    if n >= MANY_FRAGMENTS and n > 2 * ideal:
        return True
    return n > ideal and count.mapped_bytes < FRAGMENTED_EXTENT_BYTES * n


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


def sample(
    mountpoint: str,
    bounds: Bounds,
    *,
    rng: random.Random | None = None,
    mapper: Mapper = fiemap.fragments_of_fd,
    started: float | None = None,
) -> dict[str, Any]:
    """Walk and map one filesystem within ``bounds``: ``FsFragmentation`` fields as a dict.

    Each sampled file is opened only if it is still the one the walk saw (same device
    and inode: ``fiemap.open_verified``), then handed to ``mapper`` as a descriptor.

    ``started`` (a ``time.monotonic()`` value, system-wide on Linux) is when the budget
    began; a child process is given its parent's, so starting the child counts too.
    Never raises for one bad file; raises OSError when ``mountpoint`` itself is unreadable.
    """
    rng = rng or random.Random()
    started = time.monotonic() if started is None else started
    deadline = started + bounds.budget_s
    walked = walk(mountpoint, bounds, started + bounds.budget_s * _WALK_SHARE, rng)
    in_uniform = {(c.ino, c.path) for c in walked.uniform}
    in_largest = {(c.ino, c.path) for c in walked.largest}
    pool = {(c.ino, c.path): c for c in (*walked.uniform, *walked.largest)}
    order = list(pool.values())
    rng.shuffle(order)  # if FIEMAP runs out of time, what was mapped is still unbiased
    mapped: list[Mapped] = []
    errors = Counter(walked.errors)
    skipped = 0
    unsupported = ""
    for cand in order:
        if _stop_now(deadline):
            break
        try:
            fd = fiemap.open_verified(cand.path, walked.dev, cand.ino)
            try:
                count = mapper(fd)
            finally:
                os.close(fd)
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
        key = (cand.ino, cand.path)
        mapped.append(Mapped(cand, count, key in in_uniform, key in in_largest))
    figures, missing = summarise(mapped, Strata(len(walked.largest), walked.eligible - len(walked.largest)))
    out: dict[str, Any] = {
        "mountpoint": printable_path(mountpoint),
        "method": "fiemap",
        "max_files": bounds.max_files,
        "files_eligible": walked.eligible,
        "walk_complete": walked.complete,
        "budget_s": bounds.budget_s,
        **figures,
        "skipped": skipped,
        "errors": sum(errors.values()),
    }
    notes = [
        f"walked {walked.entries} entries ({'whole filesystem' if walked.complete else 'cut by budget'}),"
        f" {walked.eligible} files >= {bounds.min_bytes // 1024} KiB eligible",
        f"sample: {len(walked.uniform)} uniform + {len(walked.largest)} largest;"
        " per-file shares from the uniform part, byte shares weighted by stratum, worst files from all",
    ]
    notes += missing
    if errors:
        notes.append("errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())))
    if unsupported:
        notes.append(unsupported)
    out["note"] = "; ".join(notes)
    out["duration_s"] = time.monotonic() - started
    return out


def summarise(mapped: list[Mapped], strata: Strata) -> tuple[dict[str, Any], list[str]]:
    """The sample's figures and notes on what is missing (the module doc says which pool gives which)."""
    out: dict[str, Any] = {"files_sampled": len(mapped), "flagged_encoded": 0, "flagged_unwritten": 0}
    counted = []
    for m in mapped:
        if m.count.encoded:
            out["flagged_encoded"] += 1  # compression boundaries, not layout: not counted
            continue
        if m.count.unwritten:
            out["flagged_unwritten"] += 1
        counted.append(m)
    if not counted:
        return out, []
    notes = []
    out["files_fragmented"] = sum(1 for m in counted if is_fragmented(m.cand.size, m.count))
    # No falling back to the whole sample when no uniform file was mapped: that would be
    # the largest files alone, the very bias the uniform pool is there to avoid.
    per_file = [m for m in counted if m.uniform]
    if per_file:
        per_file_frag = sorted(m.count.fragments for m in per_file)
        n_frag = sum(1 for m in per_file if is_fragmented(m.cand.size, m.count))
        out["pct_files_fragmented"] = 100.0 * n_frag / len(per_file)
        out["fragments_mean"] = sum(per_file_frag) / len(per_file_frag)
        out["fragments_p50"] = percentile(per_file_frag, 50)
        out["fragments_p95"] = percentile(per_file_frag, 95)
        out["histogram"] = dict(Counter(bucket(value) for value in per_file_frag))
    else:
        notes.append("no file of the uniform pool was mapped: no per-file figures")
    weighted = stratum_weights(counted, strata)
    if weighted is None:
        notes.append("a stratum had no file mapped: no byte-weighted figures")
    else:
        total_bytes = sum(w * m.cand.size for m, w in weighted)
        if total_bytes:
            frag_bytes = sum(w * m.cand.size for m, w in weighted if is_fragmented(m.cand.size, m.count))
            out["pct_bytes_in_fragmented"] = 100.0 * frag_bytes / total_bytes
        fragments = sum(w * m.count.fragments for m, w in weighted)
        if fragments:
            out["avg_extent_bytes"] = sum(w * m.count.mapped_bytes for m, w in weighted) / fragments
    out["fragments_max"] = max(m.count.fragments for m in counted)
    out["worst"] = [
        {
            "path": printable_path(m.cand.path),
            "size": m.cand.size,
            "fragments": m.count.fragments,
            "mapped_bytes": m.count.mapped_bytes,
            "fragmented": is_fragmented(m.cand.size, m.count),
        }
        # Fragmented files first: large files in many ideal 128 MiB extents must not crowd them out.
        for m in heapq.nlargest(
            WORST_FILES, counted, key=lambda m: (is_fragmented(m.cand.size, m.count), m.count.fragments, m.cand.size)
        )
        if m.count.fragments > 1
    ]
    return out, notes


def stratum_weights(counted: list[Mapped], strata: Strata) -> list[tuple[Mapped, float]] | None:
    """Each counted file with the number of eligible files it stands for; None when a stratum
    that has files is not represented (its share of the bytes cannot be estimated).

    A file among the largest belongs to that stratum even if it was drawn uniformly too.
    Files drawn uniformly are a uniform sample of the eligible files, so those not among
    the largest are a uniform sample of the rest.
    """
    top = [m for m in counted if m.largest]
    rest = [m for m in counted if m.uniform and not m.largest]
    if (strata.largest and not top) or (strata.rest and not rest):
        return None
    w_top = strata.largest / len(top) if top else 0.0
    w_rest = strata.rest / len(rest) if rest else 0.0
    return [(m, w_top) for m in top] + [(m, w_rest) for m in rest]


def free_space_fields(mountpoint: str, fstype: str) -> dict[str, Any]:
    """GETFSMAP where the filesystem has a reverse map and we may read it, else why not.

    ``FreeSpaceFragmentation`` fields as a dict. Its own child, not the sampler's: the
    ioctl's buffer is larger than CPython's 1 KiB copy, so ``fcntl.ioctl`` holds the GIL
    through it (~0.1 s of kernel time on a 250 GB ext4), and in the sampler it would
    come out of the walk's share.
    """
    if fstype not in FREE_SPACE_FSTYPES:
        return {"available": False, "reason": f"GETFSMAP is not supported by {fstype or 'this filesystem'}"}
    try:
        fs = fiemap.free_space(mountpoint)
    except PermissionError:
        return {"available": False, "reason": "needs CAP_SYS_ADMIN"}
    except OSError as exc:
        if exc.errno in fiemap.UNSUPPORTED_ERRNOS:
            reason = f"GETFSMAP is not supported here ({os.strerror(exc.errno or 0)}; kernel >= 4.12 needed)"
        else:
            reason = f"GETFSMAP failed: {exc}"
        return {"available": False, "reason": reason}
    except fiemap.ExtentMapError as exc:
        return {"available": False, "reason": f"GETFSMAP answer rejected: {exc}"}
    return {
        "available": True,
        "free_extents": fs.free_extents,
        "avg_free_extent_bytes": fs.avg_bytes,
        "largest_free_extent_bytes": fs.largest_bytes,
        "pct_free_in_small_extents": fs.pct_small,
    }


def child_main(argv: list[str]) -> int:
    """Entry point of a child: ``argv[0]`` is the request as JSON; the answer goes to stdout.

    Requests: ``{"op": "sample", "mountpoint", "max_files", "budget_s", "min_bytes",
    "seed" (int or null), "started", "parent" (the agent's pid)}`` answered ``{"ok": true, "fields": {...}}``, or
    ``{"ok": false, "errno", "strerror", "filename"}`` when the mount point itself cannot
    be walked; ``{"op": "free_space", "mountpoint", "fstype"}`` answered ``{"ok": true,
    "fields": {...}}``.
    """
    global _parent
    req = json.loads(argv[0])
    _parent = int(req["parent"]) if req.get("parent") else None
    answer: dict[str, Any]
    if req["op"] == "free_space":
        answer = {"ok": True, "fields": free_space_fields(str(req["mountpoint"]), str(req["fstype"]))}
    else:
        bounds = Bounds(
            max_files=int(req["max_files"]), budget_s=float(req["budget_s"]), min_bytes=int(req["min_bytes"])
        )
        seed = req.get("seed")
        try:
            fields = sample(
                str(req["mountpoint"]),
                bounds,
                rng=random.Random(None if seed is None else int(seed)),
                started=float(req["started"]),
            )
            answer = {"ok": True, "fields": fields}
        except OSError as exc:
            answer = {"ok": False, "errno": exc.errno, "strerror": exc.strerror, "filename": exc.filename}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0
