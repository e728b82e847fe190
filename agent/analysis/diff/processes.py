"""Processes, keyed by command line, with CPU % and RSS; the agent's own left out.

A name says little (``python3`` is the agent, a web app and a runaway script alike);
the command line tells them apart. Processes sharing one (worker pools) are summed
and counted. The collecting agent and its children (``ProcessInfo.agent``) are the
collection's own work and differ in every bundle: they are never compared.

Both bundles hold only the top N by CPU and by RSS, so a process missing from one
bundle's lists was either not running or below that list's last entry there. It is
reported new (or gone) only when its figure clears that cut-off by more than the
noise and is worth a line at all (10 % of a core, or 64 MiB). A per-process CPU % is
measured over a fraction of a second in clock ticks: its noise is a tick each end of
the window and, on a busy machine, half of itself from scheduling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.analysis.diff.model import DiffSection, Measure, tolerance
from agent.analysis.diff.sections import Record, Records, compare
from protos import facts_pb2

__all__ = ["processes"]

_CPU_NOTABLE = 10.0            # % of one core
_CPU_REL = 0.5
_RSS_NOTABLE = 64 << 20
_RSS_REL = 0.25
_TICK_HZ = 100                 # /proc/<pid>/stat's unit on Linux; psutil rounds Windows' to this order too
_DEFAULT_SAMPLE_S = 0.25


def key_of(p: facts_pb2.ProcessInfo) -> str:
    """The command line, or the bracketed name of a process that has none (a kernel thread)."""
    # Whitespace folded: a multi-line ``python -c`` script stays one line of the report.
    return " ".join(p.cmdline.split()) or f"[{p.name}]"


@dataclass(frozen=True)
class _Side:
    records: Records
    cpu_cutoff: float   # the last entry of the top-by-CPU list: anyone missing was at or below it
    rss_cutoff: int
    cpu_sd: float


def _cpu(value: float, sd: float) -> Measure:
    return Measure(round(value, 1), "% of a core", sd=sd, floor=_CPU_NOTABLE, rel=_CPU_REL)


def _rss(value: int) -> Measure:
    return Measure(value, "bytes", floor=_RSS_NOTABLE, rel=_RSS_REL)


def _side(s: facts_pb2.Snapshot) -> _Side:
    pr = s.processes
    window = pr.sample_seconds if math.isfinite(pr.sample_seconds) and pr.sample_seconds > 0.01 else _DEFAULT_SAMPLE_S
    sd = 100.0 / (_TICK_HZ * window)  # one tick at either end of the window
    seen: dict[int, facts_pb2.ProcessInfo] = {}
    for p in (*pr.top_cpu, *pr.top_rss):
        seen.setdefault(p.pid, p)
    groups: dict[str, list[facts_pb2.ProcessInfo]] = {}
    for p in seen.values():
        if not p.agent:
            groups.setdefault(key_of(p), []).append(p)
    records: Records = {}
    for key, members in groups.items():
        records[key] = {
            "cpu_percent": _cpu(sum(p.cpu_percent for p in members), sd),
            "rss": _rss(sum(p.rss for p in members)),
            "count": Measure(len(members), floor=1.0, rel=0.5),
        }
    return _Side(
        records,
        min((p.cpu_percent for p in pr.top_cpu), default=0.0),
        min((p.rss for p in pr.top_rss), default=0),
        sd,
    )


def _news(rec: Record, other: _Side) -> bool:
    """Whether an item missing from ``other``'s lists really was not there (see the module docstring)."""
    cpu, cpu_cut = rec["cpu_percent"], _cpu(other.cpu_cutoff, other.cpu_sd)
    cpu_value = float(cpu.value or 0.0)
    if cpu_value >= _CPU_NOTABLE and cpu_value - other.cpu_cutoff > tolerance(cpu_cut, cpu):
        return True
    rss, rss_cut = rec["rss"], _rss(other.rss_cutoff)
    rss_value = int(rss.value or 0)
    return rss_value >= _RSS_NOTABLE and rss_value - other.rss_cutoff > tolerance(rss_cut, rss)


def processes(a: facts_pb2.Snapshot, b: facts_pb2.Snapshot) -> DiffSection:
    sa, sb = _side(a), _side(b)
    ra = {k: r for k, r in sa.records.items() if k in sb.records or _news(r, sb)}
    rb = {k: r for k, r in sb.records.items() if k in sa.records or _news(r, sa)}
    # The "count" of a group is a detail: one more worker is not a change unless its figures moved.
    section = compare("processes", ra, rb, describe=True)
    return DiffSection(
        section.name, section.added, section.removed,
        tuple(c for c in section.changed if c.field != "count"),
        section.not_compared, section.details,
    )
