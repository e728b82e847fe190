"""The run's log window and byte caps, and how cut log sources reach the manifest.

One reading of the ``logs_*`` spec options for everything that puts logs in a bundle:
the logs collector and plugins that collect application logs (``log_bounds(ctx)``,
exported by ``agent.collect``), so ``casefile collect --since 2h`` narrows a plugin's
log as it narrows the journal.

A plugin's log has no ``LogSource`` in ``Snapshot.logs`` (that message belongs to the
logs collector), so a plugin reports it in its plugin facts instead: a list under
``LOG_SOURCES_KEY`` of ``log_source_entry(...)`` objects, named like LogSource's fields.
``truncation_entries`` turns the cut ones, and the logs collector's, into the manifest's
``truncated`` list. A source cut to nothing has no bundle member: its entry's
``member`` is "".
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass

from agent.collect.framework import CollectContext
from agent.collect.options import AnyOption, FloatOption, IntOption
from protos import facts_pb2

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_BYTES_PER_SOURCE",
    "DEFAULT_SINCE_S",
    "LOG_OPTIONS",
    "LOG_SOURCES_KEY",
    "LogBounds",
    "log_bounds",
    "log_source_entry",
    "truncation_entries",
]

DEFAULT_SINCE_S = 24 * 3600
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_BYTES_PER_SOURCE = 8 * 1024 * 1024
MAX_SINCE_S = 366 * 24 * 3600
MAX_CAP = 1 << 34
LOG_SOURCES_KEY = "log_sources"

# Read by every collector that puts a log in the bundle: each lists LOG_OPTIONS in its options.
LOGS_SINCE = FloatOption(
    "logs_since_s",
    DEFAULT_SINCE_S,
    "how far back logs are read, seconds (`--since` sets it)",
    shown_default="86400 (24 h)",
    minimum=1,
    maximum=MAX_SINCE_S,
)
LOGS_MAX = IntOption(
    "logs_max_bytes",
    DEFAULT_MAX_BYTES,
    "bytes of system logs kept in all, newest first (`--logs-max` sets it)",
    shown_default="33554432 (32 MiB)",
    maximum=MAX_CAP,
)
LOGS_MAX_PER_SOURCE = IntOption(
    "logs_max_bytes_per_source",
    DEFAULT_MAX_BYTES_PER_SOURCE,
    "bytes kept of one log source, newest first; a plugin's or a spec's log is one more source",
    shown_default="8388608 (8 MiB)",
    maximum=MAX_CAP,
)
LOG_OPTIONS: tuple[AnyOption, ...] = (LOGS_SINCE, LOGS_MAX, LOGS_MAX_PER_SOURCE)

_KEPT_REASON = "byte cap or time budget; newest lines kept"
_NOTHING_REASON = "byte cap or time budget; no lines kept, so no member"


@dataclass(frozen=True)
class LogBounds:
    """The window and caps the spec's options set (``--since``, ``--logs-max``, ``--set``).

    ``max_bytes`` is for all of the logs collector's sources together. A plugin's log
    counts as one more source: ``source_cap`` bounds it. Collectors run at the same time,
    so the total is not shared with plugins; each plugin source adds at most that cap.
    """

    since_s: float  # logs_since_s
    max_bytes: int  # logs_max_bytes
    max_bytes_per_source: int  # logs_max_bytes_per_source

    @property
    def source_cap(self) -> int:
        """The most one source may keep: the per-source cap, never more than the total."""
        return min(self.max_bytes_per_source, self.max_bytes)

    def since(self, now: dt.datetime | None = None) -> dt.datetime:
        """The window's start (aware UTC): ``since_s`` before ``now`` (default: now)."""
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=self.since_s)


def log_bounds(ctx: CollectContext) -> LogBounds:
    """The run's log bounds from ``ctx``'s options; a bad value is a CollectionError."""
    return LogBounds(
        since_s=ctx.get(LOGS_SINCE), max_bytes=ctx.get(LOGS_MAX), max_bytes_per_source=ctx.get(LOGS_MAX_PER_SOURCE)
    )


def log_source_entry(
    name: str,
    *,
    artifact: str,
    lines: int,
    bytes_kept: int,
    truncated: bool,
    lines_dropped: int,
    error: str = "",
) -> dict[str, object]:
    """One plugin log source for its facts' ``LOG_SOURCES_KEY`` list (``artifact`` "" when none)."""
    return {
        "name": name,
        "artifact": artifact,
        "lines": lines,
        "bytes": bytes_kept,
        "truncated": truncated,
        "lines_dropped": lines_dropped,
        "error": error,
    }


def _entry(source: str, member: str, lines_dropped: int) -> dict[str, object]:
    return {
        "member": member,
        "source": source,
        "lines_dropped": lines_dropped,
        "reason": _KEPT_REASON if member else _NOTHING_REASON,
    }


def _plugin_sources(plugin: str, text: str) -> Iterator[tuple[str, str, int]]:
    # Plugin facts come from third-party code: take only well-typed fields, skip the rest.
    try:
        facts = json.loads(text)
    except (ValueError, RecursionError):
        return
    listed = facts.get(LOG_SOURCES_KEY) if isinstance(facts, dict) else None
    if not isinstance(listed, list):
        return
    for item in listed:
        if not isinstance(item, dict) or item.get("truncated") is not True:
            continue
        name, artifact, dropped = item.get("name"), item.get("artifact", ""), item.get("lines_dropped", 0)
        if not isinstance(name, str) or not name or not isinstance(artifact, str):
            continue
        if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
            dropped = 0
        yield f"{plugin}/{name}", artifact, dropped


def truncation_entries(snapshot: facts_pb2.Snapshot) -> list[dict[str, object]]:
    """The manifest's ``truncated`` entries: every log source a cap or the budget cut.

    The logs collector's sources first, then plugins' (source named "<plugin>/<name>").
    A source cut to nothing is listed with ``member`` "".
    """
    entries = [_entry(src.name, src.artifact, src.lines_dropped) for src in snapshot.logs.sources if src.truncated]
    for plugin in sorted(snapshot.plugin_facts):
        entries += [_entry(*found) for found in _plugin_sources(plugin, snapshot.plugin_facts[plugin])]
    return entries
