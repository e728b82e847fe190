"""The figures of one filesystem's fragmentation sample, and what counts as fragmented.

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
"""

from __future__ import annotations

import heapq
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from agent.collect import fiemap

__all__ = [
    "FRAGMENTED_EXTENT_BYTES",
    "IDEAL_EXTENT_BYTES",
    "MANY_FRAGMENTS",
    "WORST_FILES",
    "Candidate",
    "Mapped",
    "Strata",
    "bucket",
    "ideal_fragments",
    "is_fragmented",
    "percentile",
    "printable_path",
    "stratum_weights",
    "summarise",
]

# An extent-based filesystem caps one extent (ext4: 128 MiB), so a file in pieces of
# that size reads as well as it can; only more pieces than this count as fragmented.
IDEAL_EXTENT_BYTES = 128 << 20
# ...and only when they are this small on average (the module doc says why 1 MiB),
FRAGMENTED_EXTENT_BYTES = 1 << 20
# ...or when there are this many of them, whatever their size (the module doc says why).
MANY_FRAGMENTS = 10_000
WORST_FILES = 10


def printable_path(path: str) -> str:
    """A path as text that any UTF-8 consumer takes: bytes that are not UTF-8 (a file
    name is any bytes) become backslash escapes instead of lone surrogates."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass(frozen=True, order=True)
class Candidate:
    size: int
    path: str
    ino: int


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
