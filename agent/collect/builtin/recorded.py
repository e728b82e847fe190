"""The flight recorder's history for the bundle's window: what the machine looked like before.

Reads ``<home>/recorder.db`` (written by the agent service, ``agent.daemon.recorder``)
read-only, for ``recorder_since_s`` back from now (the CLI's ``--since``, a live
request's window; 6 h when neither names one). Options:

``recorder_home``     the agent home holding the database; none: nothing to read
``recorder_since_s``  the window in seconds (default 21600)

A machine without a recorder gives an empty history with a ``detail`` saying so: that is
a fact about the machine, not a failed collection. The samples are metrics, so the
``facts-only`` profile keeps them; process names go through redaction like every
string of the facts, and are pseudonymised in ``private`` (``agent.redact.facts``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from agent.collect.framework import CollectContext, Collector
from agent.collect.options import FloatOption, StrOption
from agent.recorder_db import DB_NAME, read_samples
from protos import facts_pb2

__all__ = ["RecordedHistoryCollector"]

DEFAULT_SINCE_S = 6 * 3600.0
MAX_SINCE_S = 8 * 86400.0


SINCE = FloatOption(
    "recorder_since_s",
    DEFAULT_SINCE_S,
    "how far back the flight recorder's history is read, seconds",
    shown_default="the log window (`--since`)",
    minimum=1,
    maximum=MAX_SINCE_S,
)
HOME = StrOption("recorder_home", "", "the agent's home, where the flight recorder keeps its file", internal=True)


class RecordedHistoryCollector(Collector):
    name = "recorder"
    description = "The flight recorder's history (CPU, memory, disks, network, top processes) for the window"
    budget_s = 10.0
    facts_field = "recorded_history"
    facts_type = facts_pb2.RecordedHistory

    options = (SINCE, HOME)

    def collect(self, ctx: CollectContext) -> facts_pb2.RecordedHistory:
        now = time.time()
        since_s = ctx.get(SINCE)
        facts = facts_pb2.RecordedHistory(since_unix=now - since_s)
        home = ctx.get(HOME)
        if not home or not (Path(home) / DB_NAME).exists():
            facts.detail = "no flight recorder on this machine (the agent service records; see policy.json)"
            return facts
        samples = list(read_samples(Path(home), now - since_s, now))
        names = sorted({k for s in samples for k, v in s.metrics.items() if _number(v)})
        columns = {n: facts.series.add(metric=n) for n in names}
        for s in samples:
            facts.at_unix.append(s.at)
            facts.resolution_s.append(s.resolution_s)
            for n, series in columns.items():
                v = s.metrics.get(n)
                series.values.append(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan)
            top = facts.top.add()
            for name, cpu in _pairs(s.metrics.get("top_cpu")):
                top.by_cpu.add(name=name, cpu_percent=cpu)
            for name, rss in _pairs(s.metrics.get("top_rss")):
                top.by_rss.add(name=name, rss_bytes=max(0, int(rss)))
        if not samples:
            facts.detail = f"the flight recorder has no samples in the last {since_s:g} s"
        return facts


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _pairs(value: object) -> list[tuple[str, float]]:
    """``[[name, number], ...]`` as stored; anything else (a damaged row) is skipped."""
    if not isinstance(value, list):
        return []
    return [
        (str(p[0])[:64], float(p[1]))
        for p in value
        if isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and _number(p[1])
    ]
