"""ReFS events from the Windows event logs: slow I/O, I/O failures, checksum and corruption.

The logs collector counts every Windows event by "<provider>/<id>" per source
(``LogSource.event_id_counts``). What a ReFS id means depends on the channel it was
logged in, so the source says which:

* ``windows-refs`` (Microsoft-Windows-ReFS/Operational): 147 "an I/O took more than N
  ms" (slow I/O), 149 an I/O failure. 142 (space usage) and 145, 146, 170 (latency
  summaries) are periodic reports, not problems.
* ``windows-system`` (System): ReFS 130-143, checksum mismatches and corruption it found
  (and repaired from a mirror when it could).

In the seed case (ReFS fragmentation driving CPU and RAM up tenfold) these counts were the
evidence nobody had: slow I/O on the volume while the machine looked idle.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.analysis.model import Evidence, Finding, Severity
from agent.analysis.rule import Rule

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = ["REFS_CATEGORIES", "ReFSEvents", "refs_category"]

_OPERATIONAL = "windows-refs"
_SYSTEM = "windows-system"
REFS_CATEGORIES = {
    "slow-io": "slow I/O (an I/O took longer than ReFS's threshold)",
    "io-failure": "failed I/O",
    "corruption": "checksum mismatches or corruption found",
}


def refs_category(source: str, key: str) -> str | None:
    """"slow-io", "io-failure", "corruption", or None for a key that is not a ReFS problem."""
    provider, _, raw_id = key.rpartition("/")
    if provider != "ReFS" or not raw_id.isdigit():
        return None
    event_id = int(raw_id)
    if source == _OPERATIONAL:
        return {147: "slow-io", 149: "io-failure"}.get(event_id)
    if source == _SYSTEM and 130 <= event_id <= 143:
        return "corruption"
    return None


class ReFSEvents(Rule):
    code = "refs-events"
    title = "ReFS reports slow I/O, failed I/O or corruption"
    description = "ReFS events in the Windows logs: slow I/O (147), failed I/O (149), checksum/corruption (130-143)."
    options = MappingProxyType({"slow_io_warn": 1.0, "slow_io_crit": 20.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        counts = dict.fromkeys(REFS_CATEGORIES, 0)
        evidence: list[Evidence] = []
        for i, src in enumerate(view.snapshot.logs.sources):
            for key, n in sorted(src.event_id_counts.items()):
                category = refs_category(src.name, key)
                if category is None or n <= 0:
                    continue
                counts[category] += n
                evidence.append(Evidence(f'logs.sources[{i}].event_id_counts["{key}"]', n))
        slow, failed, corrupt = counts["slow-io"], counts["io-failure"], counts["corruption"]
        if slow < self.opt("slow_io_warn") and not failed and not corrupt:
            return
        severity: Severity = "critical" if failed or corrupt or slow >= self.opt("slow_io_crit") else "warning"
        parts = [f"{n} {REFS_CATEGORIES[c]}" for c, n in counts.items() if n]
        yield self.finding(
            severity,
            f"ReFS: {', '.join(parts)}",
            "ReFS logged these events within the collection's log window. Slow I/O on a ReFS volume "
            "while user processes look idle is the pattern of metadata work on a fragmented or "
            "overfull volume; failed I/O and checksum errors point at the storage below it.",
            evidence,
            "Read the events (Event Viewer, Microsoft-Windows-ReFS/Operational and System) for the "
            "volume and duration; check free space and the storage's health; on slow I/O, compare "
            "the fragmentation facts of that volume and the ReFS driver's known issues for this build.",
        )
