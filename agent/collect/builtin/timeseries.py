"""Time series: CPU, memory, swap, disk and network rates sampled over the collection.

Samples every ``timeseries_interval_s`` (default 0.25 s) while the other collectors run
and stops when they are done (an observer: see ``Collector.observes``), with at least
``timeseries_min_samples`` (default 2), so a bundle shows the trend over its own
collection window rather than one instant; the last sample may cover a shorter
interval (its ``at`` says when it ended). ``timeseries_duration_s`` > 0 samples for
that long instead, whatever the others do. CPU comes from ``psutil.cpu_times()`` deltas — never
``cpu_percent``, whose module-global state belongs to the ``cpu`` collector. Each
sample describes the interval that ends at its ``at``; disk and network are bytes per
second over that interval (host-wide counters: in containers they are the host's).

The host's CPU figures include the agent's own work, and during a default collection
that is most of it: the fragmentation walk alone is ~0.4 s of mostly kernel time, 35-50 %
of a 2-core machine's system CPU. So each sample also records the agent's own share
(``agent_cpu_percent``, ``agent_cpu_system_percent``: this process and every descendant,
as % of all CPUs over the same interval), and rules subtract it instead of blaming the
host for the agent's own load. The host figures stay as the host saw them. Descendants
that have exited count through ``os.times()`` once waited for (POSIX); live ones are
read as they run (Linux: ``/proc/<pid>/task/*/children`` and ``/proc/<pid>/stat``, a
few reads; elsewhere psutil), so a child's time falls in the intervals it was used.
On Windows, which keeps no totals for exited children, a child's time up to its last
sample before exiting is kept.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from typing import Any

import psutil

from agent.collect.framework import CollectContext, Collector
from agent.collect.options import FloatOption, IntOption
from protos import facts_pb2

__all__ = ["AgentCpu", "TimeseriesCollector", "cpu_share", "cpu_split"]

_MARGIN_S = 0.2
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/<pid>/stat's unit


def _busy_total(times: Any) -> tuple[float, float, float, float]:
    """(total, idle, system, iowait) seconds from a cpu_times() tuple."""
    fields = times._asdict()
    # guest time is already counted inside user/nice on Linux; adding it would double it.
    total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return total, idle, fields.get("system", 0.0), fields.get("iowait", 0.0)


def cpu_split(before: Any, after: Any) -> tuple[float, float, float]:
    """(busy %, system %, iowait %) of all CPUs between two cpu_times() readings."""
    t0, i0, s0, w0 = _busy_total(before)
    t1, i1, s1, w1 = _busy_total(after)
    span = t1 - t0
    if span <= 0:
        return 0.0, 0.0, 0.0

    def pct(x: float) -> float:
        return max(0.0, min(100.0, x / span * 100.0))

    return pct(span - (i1 - i0)), pct(s1 - s0), pct(w1 - w0)


def cpu_share(seconds: float, before: Any, after: Any) -> float:
    """``seconds`` of CPU time as % of all CPUs' time between two cpu_times() readings."""
    span = _busy_total(after)[0] - _busy_total(before)[0]
    return max(0.0, min(100.0, seconds / span * 100.0)) if span > 0 else 0.0


class AgentCpu:
    """CPU seconds (busy, system) used by this process and all its descendants so far.

    Only differences between two ``read()`` calls mean anything: a child's time moves
    from "live" to this process's reaped-children total when it is waited for, and the
    sum stays continuous across that move.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._proc = sys.platform.startswith("linux") and os.path.exists(
            f"/proc/{self._pid}/task/{self._pid}/children"  # needs CONFIG_PROC_CHILDREN
        )
        self._me = psutil.Process()
        # Windows: exited children leave no trace in os.times(); keep their last reading.
        self._keep_gone = sys.platform == "win32"
        self._live: dict[psutil.Process, tuple[float, float]] = {}
        self._gone = (0.0, 0.0)

    def read(self) -> tuple[float, float]:
        # A child reaped between reading our totals and walking the live children would be
        # in neither: read the totals again after the walk and retry if they moved.
        for _ in range(5):
            own = os.times()
            kids_busy, kids_system = self._linux_children() if self._proc else self._psutil_children()
            again = os.times()
            if (again.children_user, again.children_system) == (own.children_user, own.children_system):
                break
        busy = own.user + own.system + own.children_user + own.children_system
        system = own.system + own.children_system
        return busy + kids_busy, system + kids_system

    def _linux_children(self) -> tuple[float, float]:
        busy = system = 0.0
        todo = [self._pid]
        while todo:
            pid = todo.pop()
            for kid in _proc_children(pid):
                times = _proc_times(kid)
                if times is not None:
                    busy, system = busy + times[0], system + times[1]
                todo.append(kid)
        return busy, system

    def _psutil_children(self) -> tuple[float, float]:
        live: dict[psutil.Process, tuple[float, float]] = {}
        try:
            kids = self._me.children(recursive=True)
        except psutil.Error:
            kids = []
        for kid in kids:
            try:
                t = kid.cpu_times()
            except psutil.Error:
                continue  # gone meanwhile: counted below as gone, or by os.times() once reaped
            live[kid] = (t.user + t.system + t.children_user + t.children_system, t.system + t.children_system)
        if self._keep_gone:
            for kid, (b, s) in self._live.items():
                if kid not in live:
                    self._gone = (self._gone[0] + b, self._gone[1] + s)
        self._live = live
        return (
            self._gone[0] + sum(b for b, _ in live.values()),
            self._gone[1] + sum(s for _, s in live.values()),
        )


def _proc_children(pid: int) -> list[int]:
    """Child pids of every thread of ``pid`` (a child belongs to the thread that forked it)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                kids.extend(int(k) for k in fh.read().split())
        except (OSError, ValueError):
            continue  # the thread or process ended meanwhile
    return kids


def _proc_times(pid: int) -> tuple[float, float] | None:
    """(busy, system) seconds of ``pid`` and its reaped children, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        # After "(comm)", which may hold spaces and parentheses: state is field 3,
        # utime/stime/cutime/cstime are fields 14-17.
        fields = data[data.rindex(b")") + 2 :].split()
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    except (OSError, ValueError):
        return None
    return (utime + stime + cutime + cstime) / _TICKS, (stime + cstime) / _TICKS


def _io() -> tuple[int, int, int, int]:
    disk = psutil.disk_io_counters(perdisk=False)
    net = psutil.net_io_counters(pernic=False)
    return (
        int(disk.read_bytes) if disk else 0,
        int(disk.write_bytes) if disk else 0,
        int(net.bytes_recv) if net else 0,
        int(net.bytes_sent) if net else 0,
    )


def _rate(now: int, old: int, seconds: float) -> int:
    # Counters can wrap or be reset (a disk removed): a negative delta is no data.
    return max(0, int((now - old) / seconds)) if seconds > 0 else 0


INTERVAL = FloatOption(
    "timeseries_interval_s", 0.25, "seconds between two samples of the time series", minimum=0.01, maximum=60.0
)
DURATION = FloatOption(
    "timeseries_duration_s",
    0.0,
    "how long the time series samples; 0: while the other collectors run",
    shown_default="0 (the collection window)",
    maximum=600.0,
)
MIN_SAMPLES = IntOption("timeseries_min_samples", 2, "samples the series takes at least", minimum=1, maximum=10_000)


class TimeseriesCollector(Collector):
    name = "timeseries"
    description = "CPU, memory, swap, disk and network rates sampled during the collection"
    budget_s = 3.0
    facts_field = "timeseries"
    facts_type = facts_pb2.TimeSeries
    observes = True

    options = (INTERVAL, DURATION, MIN_SAMPLES)

    def collect(self, ctx: CollectContext) -> facts_pb2.TimeSeries:
        interval, duration, min_samples = ctx.get(INTERVAL), ctx.get(DURATION), ctx.get(MIN_SAMPLES)
        fit = max(0.0, ctx.remaining() - _MARGIN_S)
        if duration > fit:
            ctx.warn(f"time series shortened from {duration:g} s to {fit:.2f} s to fit the budget")
            duration = fit
        series = facts_pb2.TimeSeries(interval_s=interval)
        agent = AgentCpu()
        prev_t, prev_cpu, prev_io, prev_own = time.monotonic(), psutil.cpu_times(), _io(), agent.read()
        fixed = duration > 0
        end = prev_t + (duration if fixed else fit)
        next_at = prev_t + interval
        while next_at <= end + 1e-9:
            if fixed or ctx.wait_for_others(0):
                # A fixed length, or the others were done already: full intervals up to the minimum.
                if not fixed and len(series.samples) >= min_samples:
                    break
                time.sleep(max(0.0, next_at - time.monotonic()))
                if not fixed and len(series.samples) + 1 >= min_samples:
                    end = 0.0
            elif ctx.wait_for_others(next_at - time.monotonic()):
                # The others finished during this interval: one more sample, cut short,
                # ends the series there, unless the last one ended close enough to it.
                if len(series.samples) >= min_samples and time.monotonic() - prev_t < interval / 2:
                    break
                if len(series.samples) + 1 >= min_samples:
                    end = 0.0
                else:
                    time.sleep(max(0.0, next_at - time.monotonic()))
            now_t, now_cpu, now_io, now_own = time.monotonic(), psutil.cpu_times(), _io(), agent.read()
            seconds = now_t - prev_t
            busy, system, iowait = cpu_split(prev_cpu, now_cpu)
            sample = series.samples.add(
                cpu_percent=round(busy, 2),
                cpu_system_percent=round(system, 2),
                cpu_iowait_percent=round(iowait, 2),
                # At most the host's figure it is a part of: per-process times are exact, the
                # host's are counted by clock tick, so in a short interval the two can differ.
                agent_cpu_percent=round(min(busy, cpu_share(now_own[0] - prev_own[0], prev_cpu, now_cpu)), 2),
                agent_cpu_system_percent=round(min(system, cpu_share(now_own[1] - prev_own[1], prev_cpu, now_cpu)), 2),
                mem_percent=float(psutil.virtual_memory().percent),
                swap_percent=_swap_percent(),
                disk_read_bps=_rate(now_io[0], prev_io[0], seconds),
                disk_write_bps=_rate(now_io[1], prev_io[1], seconds),
                net_recv_bps=_rate(now_io[2], prev_io[2], seconds),
                net_sent_bps=_rate(now_io[3], prev_io[3], seconds),
            )
            sample.at.FromDatetime(dt.datetime.now(dt.UTC))
            prev_t, prev_cpu, prev_io, prev_own = now_t, now_cpu, now_io, now_own
            next_at += interval
        series.agent_cpu_known = len(series.samples) > 0  # each sample has the agent's share
        return series


def _swap_percent() -> float:
    try:
        return float(psutil.swap_memory().percent)
    except (OSError, RuntimeError):
        return 0.0
