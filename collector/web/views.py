"""What the pages show, shaped from API answers: case groups, host rows, facts tree, chart.

Plain functions over protobuf messages and the stored analysis JSON; no I/O here.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from agent.analysis.charts import Series, stacked_histogram
from agent.analysis.model import SEVERITY_RANK
from protos import collector_pb2, facts_pb2

__all__ = [
    "BundleSections",
    "FactNode",
    "Offer",
    "Worst",
    "bundle_sections",
    "fact_tree",
    "offered_scopes",
    "timeline_svg",
    "when",
    "when_us",
    "worst_by",
]

_TREE_LIST_MAX = 200  # items shown per list in the facts tree (the rest are counted)


def when(ts: Timestamp | None) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime(tzinfo=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def when_us(us: int) -> str:
    """Microseconds since the epoch (as stored) as the pages show times."""
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if us else ""


@dataclass(frozen=True)
class Offer:
    """The scopes a host's snapshot form offers, and why (``note``, shown with the form)."""

    scopes: tuple[str, ...]
    note: str = ""
    from_policy: bool = False  # the agents' reported policies decided (not the full list)


def offered_scopes(agent_ids: Sequence[str], policies: dict[str, dict[str, Any]], known: Sequence[str]) -> Offer:
    """What the live snapshot form offers for a host whose enrolled agents are ``agent_ids``:
    the scopes their policies allow, as each reported on connect (``policies``); ``known``
    (every scope) when an agent has not reported one (an older agent), with a note: that
    agent still denies what its policy does not allow."""
    if not agent_ids:
        return Offer(tuple(known))
    silent = [a for a in agent_ids if a not in policies]
    if silent:
        return Offer(
            tuple(known),
            f"Agent {', '.join(silent[:3])} has not reported its policy (an older agent): every scope is "
            "offered; the agent denies those its policy does not allow.",
        )
    allowed: list[str] = []
    for agent_id in agent_ids:
        for scope in policies[agent_id].get("allowed_scopes") or []:
            if isinstance(scope, str) and scope not in allowed:
                allowed.append(scope)
    if not allowed:
        return Offer((), "This host's policy allows no live snapshot.", from_policy=True)
    return Offer(tuple(allowed), "The scopes this host's policy allows, as its agent reported on connecting.",
                 from_policy=True)


@dataclass(frozen=True)
class Worst:
    severity: str
    title: str
    count: int  # findings of at least warning

    @property
    def rank(self) -> int:
        return SEVERITY_RANK.get(self.severity, 0)


def worst_by(findings: Iterable[collector_pb2.StoredFinding], key: str) -> dict[str, Worst]:
    """The worst finding per ``key`` (``bundle_id``, ``hostname`` or ``case_id``)."""
    out: dict[str, Worst] = {}
    for f in findings:
        k = getattr(f, key)
        seen = out.get(k)
        rank = SEVERITY_RANK.get(f.severity, 0)
        if seen is None or rank > seen.rank:
            out[k] = Worst(f.severity, f.title, (seen.count if seen else 0) + 1)
        else:
            out[k] = Worst(seen.severity, seen.title, seen.count + 1)
    return out


@dataclass(frozen=True)
class FactNode:
    """One node of the facts tree: a name, and either a value or children."""

    name: str
    value: str = ""
    children: tuple[FactNode, ...] = ()
    hidden: int = 0  # list items not shown


def _node(name: str, value: Any) -> FactNode:
    if isinstance(value, dict):
        return FactNode(name, children=tuple(_node(k, v) for k, v in value.items()))
    if isinstance(value, list):
        shown = value[:_TREE_LIST_MAX]
        return FactNode(
            f"{name} ({len(value)})",
            children=tuple(_node(f"[{i}]", v) for i, v in enumerate(shown)),
            hidden=len(value) - len(shown),
        )
    return FactNode(name, value=json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value)


def fact_tree(snapshot: facts_pb2.Snapshot) -> tuple[FactNode, ...]:
    """The facts as nested nodes, in the message's field order."""
    data = MessageToDict(snapshot, preserving_proto_field_name=True)
    return tuple(_node(k, v) for k, v in data.items())


def _epoch(text: str | None) -> float:
    if not text:
        return 0.0
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def timeline_svg(timeline: dict[str, Any]) -> str:
    """The timeline chart (as the HTML report draws it): errors and warnings per interval,
    the onset marked, earlier bursts shaded. Empty when the bundle has no timed log lines."""
    buckets = timeline.get("buckets") or []
    if not buckets:
        return ""
    onset = timeline.get("onset")
    marker = None
    label = ""
    if onset:
        starts = [b["start"] for b in buckets]
        if onset.get("bucket_start") in starts:
            marker = starts.index(onset["bucket_start"])
        label = f"onset {(onset.get('began_at') or '')[11:16]} UTC"
    interval = int(timeline.get("interval_s") or 60)
    times = [_epoch(b["start"]) for b in buckets]
    bands = []
    for episode in timeline.get("episodes") or []:
        inside = [i for i, t in enumerate(times) if _epoch(episode["start"]) - interval < t <= _epoch(episode["end"])]
        if inside:
            bands.append((inside[0], inside[-1]))
    return stacked_histogram(
        f"Errors and warnings per {interval} s",
        times,
        [
            Series("errors", tuple(float(b["errors"]) for b in buckets), "#b3261e"),
            Series("warnings", tuple(float(b["warnings"]) for b in buckets), "#e0a030"),
        ],
        marker=marker,
        marker_label=label,
        bands=bands,
    )


@dataclass(frozen=True)
class BundleSections:
    """Parts of the bundle page drawn as the HTML report draws them (escaped there)."""

    trigger: str  # "" unless a trigger of the agent's policy sealed the bundle
    recorded: str  # the flight recorder's history, the metric onsets and the log onset marked
    crashes: str  # core dumps, kernel crashes, /var/crash; or "not collected"


def bundle_sections(detail: collector_pb2.BundleDetail, timeline: dict[str, Any]) -> BundleSections:
    from agent.analysis.report_crashes import bundle_trigger, crashes_section, trigger_section
    from agent.analysis.report_recorded import recorded_section

    try:
        manifest = json.loads(detail.manifest_json) if detail.manifest_json else None
    except (ValueError, RecursionError):
        manifest = None
    spec = manifest.get("spec") if isinstance(manifest, dict) else None
    onset = timeline.get("onset")
    incident = None
    if isinstance(onset, dict) and onset.get("began_at"):
        # The log onset on the recorder's clock (the machine's own, before the correction).
        try:
            incident = _epoch(str(onset["began_at"])) - float(timeline.get("clock_offset_s") or 0.0)
        except (TypeError, ValueError):
            incident = None
    return BundleSections(
        trigger=trigger_section(bundle_trigger(detail.facts, spec)),
        recorded=recorded_section(detail.facts, incident),
        crashes=crashes_section(detail.facts),
    )
