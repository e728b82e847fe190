"""The fact areas compared item by item: host, CPU, load, memory, swap, disks, network.

Tolerances, and why (each is the smallest change worth telling a reader, or the
sampling error of the figure, whichever is larger):

* CPU busy/kernel/iowait: the mean of the time-series samples over the collection
  window (about a second) with the agent's own share taken out: the collection's own
  work is not the host's. Its standard error comes from the samples' spread (adjacent
  samples share bursts, so that understates it); below 25 points of all CPUs (half a
  core on a 2-core machine; two runs a few seconds apart on a busy 2-core machine saw
  kernel time move by 15) nothing is said. I/O wait: 10 points.
* Load: an exponentially damped average of runnable tasks; it moves by less than half
  a task per core (or a quarter of itself) while nothing changes.
* Memory and swap used: instantaneous and exact, but other programs allocate and free
  all the time: 5 points of RAM. Sizes: 1 % (a VM resized, a swap file added).
* Filesystems: used space and inodes, 1 point of the filesystem (on a 250 GiB disk,
  2.5 GiB written or deleted).
* Uptime, collection time and counters since boot always change: they are not facts
  to compare. A reboot shows as a new boot time (two minutes of clock jitter allowed).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping

from agent.analysis.diff.model import Change, DiffSection, Measure, NotCompared, differs, tolerance
from protos import facts_pb2

__all__ = ["Record", "compare", "cpu", "filesystems", "host", "interfaces", "load", "memory",
           "ports", "services", "swap"]

Record = dict[str, Measure]
Records = dict[str, Record]

CPU_FLOOR_PCT = 25.0
IOWAIT_FLOOR_PCT = 10.0
MEMORY_FLOOR_PCT = 5.0
DISK_FLOOR_PCT = 1.0
SIZE_REL = 0.01
BOOT_JITTER_S = 120.0


def compare(
    name: str,
    a: Mapping[str, Record],
    b: Mapping[str, Record],
    *,
    describe: bool = False,
    not_compared: Iterable[NotCompared] = (),
) -> DiffSection:
    """Items added, removed, and figures beyond their noise; ``describe`` keeps added/removed items' figures."""
    changed: list[Change] = []
    for key in sorted(set(a) & set(b)):
        ra, rb = a[key], b[key]
        for f in [*ra, *(f for f in rb if f not in ra)]:
            ma, mb = ra.get(f, Measure(None)), rb.get(f, Measure(None))
            if differs(ma, mb):
                changed.append(Change(key, f, ma.value, mb.value, ma.unit or mb.unit, ma.size, mb.size,
                                      tolerance(ma, mb)))
    added, removed = tuple(sorted(set(b) - set(a))), tuple(sorted(set(a) - set(b)))
    details = (
        tuple((k, tuple(b[k].items())) for k in added) + tuple((k, tuple(a[k].items())) for k in removed)
        if describe else ()
    )
    return DiffSection(name, added, removed, tuple(changed), tuple(not_compared), details)


def _r(x: float, digits: int = 1) -> float:
    return round(x, digits)


def _pct(value: float, *, size: int | None = None, floor: float, sd: float = 0.0) -> Measure:
    return Measure(_r(value), "%", size, sd=sd, floor=floor)


def _size(value: int) -> Measure:
    return Measure(value, "bytes", rel=SIZE_REL)


def host(s: facts_pb2.Snapshot) -> Records:
    h = s.host
    rec: Record = {f: Measure(getattr(h, f)) for f in ("os", "os_release", "os_version", "kernel", "arch")}
    if h.HasField("boot_time"):
        rec["booted"] = Measure(h.boot_time.seconds, "time", floor=BOOT_JITTER_S)
    return {"host": rec}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean of a few samples and its standard error (none from one sample); non-numbers left out."""
    values = [v for v in values if math.isfinite(v)]
    if len(values) < 2:
        return (values[0] if values else 0.0), 0.0
    try:
        return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    except OverflowError:  # figures near the largest float: no agent measures a CPU like that
        return math.nan, 0.0


def _busy(s: facts_pb2.Snapshot, from_series: bool) -> Record:
    if not from_series:
        # One sub-second window with the agent's own work in it: only a large move says anything.
        return {"busy_pct": _pct(s.cpu.total_percent, floor=1.5 * CPU_FLOOR_PCT)}
    samples = s.timeseries.samples
    busy = _mean_sd([max(0.0, x.cpu_percent - x.agent_cpu_percent) for x in samples])
    system = _mean_sd([max(0.0, x.cpu_system_percent - x.agent_cpu_system_percent) for x in samples])
    iowait = _mean_sd([x.cpu_iowait_percent for x in samples])
    return {
        "busy_pct": _pct(busy[0], floor=CPU_FLOOR_PCT, sd=busy[1]),
        "kernel_pct": _pct(system[0], floor=CPU_FLOOR_PCT, sd=system[1]),
        "iowait_pct": _pct(iowait[0], floor=IOWAIT_FLOOR_PCT, sd=iowait[1]),
    }


def cpu(a: facts_pb2.Snapshot, b: facts_pb2.Snapshot) -> tuple[Records, Records]:
    """CPU use of everything but the agent, from the time series when both bundles have one."""
    series = all(s.timeseries.agent_cpu_known and s.timeseries.samples for s in (a, b))

    def one(s: facts_pb2.Snapshot) -> Records:
        return {"cpu": {"logical_cpus": Measure(s.cpu.logical_count), **_busy(s, series)}}

    return one(a), one(b)


def load(s: facts_pb2.Snapshot) -> Records:
    c = s.cpu
    floor = max(1.0, 0.5 * c.logical_count)
    return {"load": {f: Measure(_r(getattr(c, f), 2), floor=floor, rel=0.25) for f in ("load1", "load5", "load15")}}


def memory(s: facts_pb2.Snapshot) -> Records:
    m = s.memory
    used = max(0, m.total - m.available) if m.available else m.used
    return {"memory": {"used_pct": _pct(m.percent, size=used, floor=MEMORY_FLOOR_PCT), "total": _size(m.total)}}


def swap(s: facts_pb2.Snapshot) -> Records:
    m = s.memory
    return {"swap": {
        "used_pct": _pct(m.swap_percent, size=m.swap_used, floor=MEMORY_FLOOR_PCT),
        "total": _size(m.swap_total),
    }}


def filesystems(s: facts_pb2.Snapshot) -> Records:
    out: Records = {}
    for p in s.disks.partitions:
        rec: Record = {
            "device": Measure(p.device), "fstype": Measure(p.fstype), "size": _size(p.total),
            "used_pct": _pct(p.percent, size=p.used, floor=DISK_FLOOR_PCT),
        }
        if p.inodes_total:
            rec["inodes_used_pct"] = _pct(100.0 * p.inodes_used / p.inodes_total, floor=DISK_FLOOR_PCT)
        rec["error"] = Measure(p.error or None)
        out[p.mountpoint] = rec
    return out


def ports(s: facts_pb2.Snapshot) -> Records:
    return {f"{p.protocol} {p.address}:{p.port}": {"process": Measure(p.process or None)}
            for p in s.network_depth.listening}


def services(s: facts_pb2.Snapshot) -> Records:
    return {f.name: {"state": Measure(f"{f.state}/{f.sub_state}"), "result": Measure(f.result or None)}
            for f in s.services.failed}


def interfaces(s: facts_pb2.Snapshot) -> Records:
    return {
        n.name: {"up": Measure(n.is_up), "mtu": Measure(n.mtu), "speed_mbps": Measure(n.speed_mbps),
                 "mac": Measure(n.mac), "addresses": Measure(", ".join(sorted(a.address for a in n.addresses)))}
        for n in s.network.interfaces
    }
