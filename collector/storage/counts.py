"""A bundle's collector outcomes as the listings count them: ok, skipped, failed.

Skipped (SKIPPED: left out by the request; UNSUPPORTED: not for this platform) is
counted apart from failed (ERROR, TIMEOUT): an engineer scanning a case looks for
faults, and "3 failed" on every Linux bundle for the macOS-only collectors hid them.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SKIPPED_STATES", "collector_counts"]

SKIPPED_STATES = frozenset({"skipped", "unsupported"})


def collector_counts(collectors: Iterable[object]) -> tuple[int, int, int]:
    """``(ok, skipped, failed)`` from a manifest's ``collectors`` entries."""
    statuses = [s for s in collectors if isinstance(s, dict)]
    ok = sum(1 for s in statuses if s.get("status") == "ok")
    skipped = sum(1 for s in statuses if s.get("status") in SKIPPED_STATES)
    return ok, skipped, len(statuses) - ok - skipped
