"""What each bundle collected: a fact area one bundle did not collect is not compared.

A collector that was skipped by the spec, unsupported, failed or timed out left empty
or partial facts; comparing them would report every mount "removed" and every finding
"resolved". The manifest's per-collector entries say what ran (the Snapshot carries
the same list); a bundle that lists none (crafted, or from an agent too old to record
them) is taken as having collected everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from protos import facts_pb2

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = ["Coverage", "collector_of_fact"]

# Snapshot fields filled by one collector each, and that collector's name. Other fields
# (``collectors``, the bundle's identity) belong to the run, not to a collector.
_FIELD_TO_COLLECTOR = {
    **{f: f for f in ("host", "cpu", "memory", "disks", "network", "logs", "fragmentation", "processes",
                      "services", "clock", "timeseries")},
    "network_depth": "netdepth",
}


def collector_of_fact(fact_path: str) -> str | None:
    """The collector behind a fact path (``disks.partitions[1].percent`` -> ``disks``), if any."""
    head, _, rest = fact_path.partition(".")
    head = head.split("[", 1)[0]
    if head == "plugin_facts":
        return rest.split(".", 1)[0].split("[", 1)[0] or None
    return _FIELD_TO_COLLECTOR.get(head)


@dataclass(frozen=True)
class Coverage:
    """Collector name -> state ("ok", "skipped", "error", ...) for one bundle; empty: unknown."""

    states: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, view: BundleView) -> Coverage:
        entries = view.manifest.collectors if view.manifest is not None else ()
        if entries:
            return cls(tuple(
                (str(e.get("name", "")), str(e.get("status", "")).lower()) for e in entries if isinstance(e, dict)
            ))
        state_name = facts_pb2.CollectorStatus.State.Name
        return cls(tuple((c.name, state_name(c.state).lower()) for c in view.snapshot.collectors))

    def missing(self, collector: str) -> str | None:
        """Why ``collector``'s facts are not in this bundle, or None when they are."""
        if not self.states:
            return None
        state = dict(self.states).get(collector)
        if state is None:
            return f"{collector} not collected"
        if state == "ok":
            return None
        return f"{collector} {state}"


def not_collected(a: Coverage, b: Coverage, collectors: tuple[str, ...]) -> str | None:
    """Why the facts of ``collectors`` cannot be compared between the two bundles, or None."""
    reasons = []
    for side, cov in (("older", a), ("newer", b)):
        gaps = [r for r in (cov.missing(c) for c in collectors) if r]
        if gaps:
            reasons.append(f"{', '.join(gaps)} in the {side} bundle")
    return "; ".join(reasons) or None
