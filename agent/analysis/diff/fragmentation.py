"""Fragmentation, compared only where two samples describe the same thing.

The fiemap figures come from a sample of files met by a random walk of the directory
tree. When the walk covered the whole filesystem, the per-file share is a uniform draw
from all eligible files: it is compared with a binomial standard error (finite
population corrected), so a machine that did not change shows no change. When the
walk was cut by its time budget, each bundle describes a different random handful of
directories, not the filesystem: on one unchanged machine eight runs in a row gave
0.6 % to 56 % of files fragmented. Those are "not compared", with the reason; so is
a fiemap sample whose coverage the bundle does not state. Figures the platform
computes over the whole volume (Windows' defragmentation engine, free-space extents
from GETFSMAP) are compared with a small fixed tolerance.
"""

from __future__ import annotations

import math
import re

from agent.analysis.diff.model import DiffSection, Measure, NotCompared
from agent.analysis.diff.sections import Records, compare
from protos import facts_pb2

__all__ = ["fragmentation"]

# Older bundles' only account of the walk's coverage, written by agent.collect.fragwalk into ``note``.
_WALK = re.compile(r"walked \d+ entries \((whole filesystem|cut by budget)\), (\d+) files")
_PCT_FLOOR = 1.0          # points: below this a change in fragmented files is not worth a line
_BYTES_FLOOR = 5.0        # byte shares are weighted by file size: fewer files carry them
_MEAN_REL = 0.5           # fragments per file: heavy-tailed, half of itself
_WHOLE_VOLUME_FLOOR = 2.0


def _coverage(f: facts_pb2.FsFragmentation) -> tuple[str | None, int]:
    """(why this sample cannot be compared or None, eligible files) for a fiemap sample.

    Bundles record the coverage as typed facts (``walk_complete``, ``files_eligible``);
    older ones only in the walk's note, which is read when the typed facts are absent."""
    if f.walk_complete:
        return None, int(f.files_eligible)
    if f.files_eligible:  # typed facts present, and the walk did not finish
        return "the walk was cut by its time budget: its figures describe the directories walked", 0
    m = _WALK.search(f.note)
    if m is None:
        return "the bundle does not say what part of the filesystem its sample covers", 0
    if m.group(1) != "whole filesystem":
        return "the walk was cut by its time budget: its figures describe the directories walked", 0
    return None, int(m.group(2))


def _binomial_sd(pct: float, n: int, population: int) -> float:
    """Standard error, in points, of a share estimated from ``n`` of ``population`` files."""
    if n <= 0 or not math.isfinite(pct):
        return 0.0
    # Agresti-Coull: a share of 0 of a small draw is not known to be exactly 0.
    x = min(max(pct, 0.0), 100.0) / 100.0 * n
    p = (x + 2.0) / (n + 4.0)
    if population <= n:
        return 0.0  # every eligible file was mapped: the figure is exact
    fpc = (population - n) / (population - 1)
    return 100.0 * math.sqrt(p * (1.0 - p) / n * fpc)


def _record(f: facts_pb2.FsFragmentation, eligible: int) -> dict[str, Measure]:
    rec: dict[str, Measure] = {"method": Measure(f.method), "media": Measure(f.media or None)}
    if f.method == "fiemap":
        n = sum(f.histogram.values()) or int(f.files_sampled)
        sd = _binomial_sd(f.pct_files_fragmented, n, eligible)
        rec["pct_files_fragmented"] = Measure(round(f.pct_files_fragmented, 1), "%", sd=sd, floor=_PCT_FLOOR)
        rec["pct_bytes_in_fragmented"] = Measure(round(f.pct_bytes_in_fragmented, 1), "%", sd=sd,
                                                 floor=_BYTES_FLOOR)
        rec["fragments_mean"] = Measure(round(f.fragments_mean, 2), floor=0.5, rel=_MEAN_REL)
    else:
        rec["vendor_fragmented_pct"] = Measure(round(f.vendor_fragmented_pct, 1), "%", floor=_WHOLE_VOLUME_FLOOR)
    fs = f.free_space
    if fs.available and not fs.partial:  # a map cut by its bound: its share is of a varying part
        rec["free_in_small_extents_pct"] = Measure(round(fs.pct_free_in_small_extents, 1), "%",
                                                   floor=_WHOLE_VOLUME_FLOOR)
    return rec


def _side(s: facts_pb2.Snapshot) -> tuple[Records, dict[str, str]]:
    records: Records = {}
    partial: dict[str, str] = {}
    for f in s.fragmentation.filesystems:
        eligible = 0
        if f.method == "fiemap":
            why, eligible = _coverage(f)
            if why:
                partial[f.mountpoint] = why
        records[f.mountpoint] = _record(f, eligible)
    return records, partial


def fragmentation(a: facts_pb2.Snapshot, b: facts_pb2.Snapshot) -> DiffSection:
    ra, pa = _side(a)
    rb, pb = _side(b)
    skipped: list[NotCompared] = []
    for mount in sorted((set(pa) | set(pb)) & set(ra) & set(rb)):
        side = "both bundles" if mount in pa and mount in pb else ("the older bundle" if mount in pa else
                                                                    "the newer bundle")
        skipped.append(NotCompared(mount, f"{pa.get(mount) or pb.get(mount)} (in {side})"))
        del ra[mount], rb[mount]
    return compare("fragmentation", ra, rb, not_compared=skipped)
