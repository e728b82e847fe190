"""Free-space fragmentation from the filesystem's reverse map (GETFSMAP), within its own bound.

``FreeSpaceFragmentation`` fields as a dict, in the standard library only (it runs in the
fragmentation child, see ``fragwalk``). Its own child, not the sampler's: the ioctl's
buffer is larger than CPython's 1 KiB copy, so ``fcntl.ioctl`` holds the GIL through
each call, and in the sampler it would come out of the walk's share.

The map has its own time bound (``budget_s``): on a large root filesystem with many
free extents the whole map takes seconds (2.5-5 s on this 252 GB ext4 with 36,000 free
extents), more than all the rest of a collection. Cut short, the figures are of the
part read (``partial``, ``covered_pct``: the share of the filesystem's blocks it
reached, in address order), and ``small_free_bytes`` with ``fs_free_bytes`` (statfs)
bound the whole: at least ``small_free_bytes / fs_free_bytes`` of the free space is in
small pieces, whatever the rest holds. The share among the part read is no estimate of
the whole (the start of a disk is the most used part): a reader of a partial map must
judge from the bound.
"""

from __future__ import annotations

import os
import time
from typing import Any

from agent.collect import fiemap

__all__ = ["DEFAULT_FREE_BUDGET_S", "FREE_SPACE_FSTYPES", "fields_of", "free_space_fields"]

FREE_SPACE_FSTYPES = frozenset({"ext4", "xfs"})  # the ones with a reverse map (GETFSMAP)
DEFAULT_FREE_BUDGET_S = 0.5


def free_space_fields(
    mountpoint: str, fstype: str, *, budget_s: float | None = None, started: float | None = None
) -> dict[str, Any]:
    """GETFSMAP where the filesystem has a reverse map and we may read it, else why not.

    ``budget_s`` (None: no bound) counts from ``started`` (``time.monotonic()``, system-wide
    on Linux: a child is given its parent's) or from now.
    """
    if fstype not in FREE_SPACE_FSTYPES:
        return {"available": False, "reason": f"GETFSMAP is not supported by {fstype or 'this filesystem'}"}
    deadline = None if budget_s is None else (time.monotonic() if started is None else started) + budget_s
    try:
        fs = fiemap.free_space(mountpoint, deadline=deadline)
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
    return fields_of(fs, budget_s)


def fields_of(fs: fiemap.FreeSpace, budget_s: float | None = None) -> dict[str, Any]:
    """``FreeSpaceFragmentation`` fields of a map read (whole, or cut after ``budget_s``)."""
    out: dict[str, Any] = {
        "available": True,
        "free_extents": fs.free_extents,
        "avg_free_extent_bytes": fs.avg_bytes,
        "largest_free_extent_bytes": fs.largest_bytes,
        "pct_free_in_small_extents": fs.pct_small,
        "covered_pct": fs.covered_pct,
        "small_free_bytes": fs.small_bytes,
        "fs_free_bytes": fs.fs_free_bytes,
    }
    if fs.partial:
        bound = "its bound" if budget_s is None else f"its {budget_s:g} s bound"
        out["partial"] = True
        out["reason"] = (
            f"free-space map cut by {bound} after {fs.covered_pct:.1f}% of the filesystem's blocks "
            "(option frag_free_budget_s)"
        )
    return out
