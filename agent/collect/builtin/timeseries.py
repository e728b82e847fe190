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
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import psutil

from agent.collect.framework import CollectContext, Collector
from protos import facts_pb2

__all__ = ["TimeseriesCollector", "cpu_split"]

_MARGIN_S = 0.2


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


class TimeseriesCollector(Collector):
    name = "timeseries"
    description = "CPU, memory, swap, disk and network rates sampled during the collection"
    budget_s = 3.0
    facts_field = "timeseries"
    facts_type = facts_pb2.TimeSeries
    observes = True

    def collect(self, ctx: CollectContext) -> facts_pb2.TimeSeries:
        interval = ctx.float_option("timeseries_interval_s", 0.25, minimum=0.01, maximum=60.0)
        duration = ctx.float_option("timeseries_duration_s", 0.0, maximum=600.0)
        min_samples = ctx.int_option("timeseries_min_samples", 2, minimum=1, maximum=10_000)
        fit = max(0.0, ctx.remaining() - _MARGIN_S)
        if duration > fit:
            ctx.warn(f"time series shortened from {duration:g} s to {fit:.2f} s to fit the budget")
            duration = fit
        series = facts_pb2.TimeSeries(interval_s=interval)
        prev_t, prev_cpu, prev_io = time.monotonic(), psutil.cpu_times(), _io()
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
            now_t, now_cpu, now_io = time.monotonic(), psutil.cpu_times(), _io()
            seconds = now_t - prev_t
            busy, system, iowait = cpu_split(prev_cpu, now_cpu)
            sample = series.samples.add(
                cpu_percent=round(busy, 2),
                cpu_system_percent=round(system, 2),
                cpu_iowait_percent=round(iowait, 2),
                mem_percent=float(psutil.virtual_memory().percent),
                swap_percent=_swap_percent(),
                disk_read_bps=_rate(now_io[0], prev_io[0], seconds),
                disk_write_bps=_rate(now_io[1], prev_io[1], seconds),
                net_recv_bps=_rate(now_io[2], prev_io[2], seconds),
                net_sent_bps=_rate(now_io[3], prev_io[3], seconds),
            )
            sample.at.FromDatetime(dt.datetime.now(dt.UTC))
            prev_t, prev_cpu, prev_io = now_t, now_cpu, now_io
            next_at += interval
        return series


def _swap_percent() -> float:
    try:
        return float(psutil.swap_memory().percent)
    except (OSError, RuntimeError):
        return 0.0
