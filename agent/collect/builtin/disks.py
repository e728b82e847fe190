"""Disks: mounted filesystems with usage and inodes, and per-disk I/O counters.

``disk_usage`` is a statfs call, and statfs on a dead network mount blocks in the
kernel for minutes. Each mount is therefore probed in its own daemon thread under a
short timeout; a mount that does not answer gets ``error`` on its Partition instead of
stalling the collector. A probe that is still stuck from an earlier collection is not
started again, so a long-running agent does not pile up blocked threads.
"""

from __future__ import annotations

import os
import threading
import time
from typing import NamedTuple

import psutil

from agent.collect.framework import CollectContext, Collector, Pending, describe_exception
from agent.collect.options import FloatOption
from protos import facts_pb2


class _Usage(NamedTuple):
    total: int
    used: int
    free: int
    percent: float
    inodes: tuple[int, int, int] | None  # total, used, free


_stuck_lock = threading.Lock()
_stuck: dict[str, Pending[_Usage]] = {}  # mountpoint -> probe that has not answered yet


MOUNT_TIMEOUT = FloatOption(
    "disk_mount_timeout_s", 1.0, "how long one mount's usage may take (a dead network mount), seconds", maximum=60.0
)


class DisksCollector(Collector):
    name = "disks"
    description = "Mounted filesystems with space and inode usage, per-disk I/O counters"
    budget_s = 4.0
    facts_field = "disks"
    facts_type = facts_pb2.DiskFacts

    options = (MOUNT_TIMEOUT,)

    def collect(self, ctx: CollectContext) -> facts_pb2.DiskFacts:
        mount_timeout = ctx.get(MOUNT_TIMEOUT)
        facts = facts_pb2.DiskFacts()
        probes: list[tuple[facts_pb2.Partition, Pending[_Usage] | None]] = []
        for part in psutil.disk_partitions(all=False):
            entry = facts.partitions.add(
                device=part.device,
                mountpoint=part.mountpoint,
                fstype=part.fstype,
                options=part.opts,
            )
            probes.append((entry, _probe(part.mountpoint)))
        # All probes run at once, so N dead mounts cost one timeout, not N.
        deadline = time.monotonic() + min(mount_timeout, ctx.remaining())
        for entry, probe in probes:
            if probe is None:
                entry.error = "usage still blocked since an earlier collection"
                continue
            _fill_usage(entry, probe, deadline)
        _fill_io(facts, ctx)
        return facts


def _probe(mountpoint: str) -> Pending[_Usage] | None:
    with _stuck_lock:
        earlier = _stuck.get(mountpoint)
        if earlier is not None and not earlier.done():
            return None
        probe = Pending(lambda: _usage(mountpoint), name=f"casefile-disk-usage {mountpoint}")
        _stuck[mountpoint] = probe
        return probe


def _fill_usage(entry: facts_pb2.Partition, probe: Pending[_Usage], deadline: float) -> None:
    timeout = deadline - time.monotonic()
    try:
        usage = probe.result(timeout)
    except TimeoutError:
        entry.error = f"usage did not answer within {max(0.0, timeout):.2f} s (hung mount?)"
        return
    except Exception as exc:  # permission denied, vanished mount: that partition only
        entry.error = describe_exception(exc)
    else:
        entry.total, entry.used, entry.free, entry.percent = usage[:4]
        if usage.inodes is not None:
            entry.inodes_total, entry.inodes_used, entry.inodes_free = usage.inodes
    with _stuck_lock:
        if _stuck.get(entry.mountpoint) is probe:
            del _stuck[entry.mountpoint]


def _usage(mountpoint: str) -> _Usage:
    du = psutil.disk_usage(mountpoint)
    inodes = None
    if hasattr(os, "statvfs"):  # POSIX only; Windows has no inode counts
        st = os.statvfs(mountpoint)
        inodes = (int(st.f_files), int(st.f_files - st.f_ffree), int(st.f_favail))
    return _Usage(int(du.total), int(du.used), int(du.free), float(du.percent), inodes)


def _fill_io(facts: facts_pb2.DiskFacts, ctx: CollectContext) -> None:
    try:
        # None or {} on diskless machines; Windows may need `diskperf -y`.
        counters = psutil.disk_io_counters(perdisk=True) or {}
    except (OSError, RuntimeError) as exc:
        ctx.warn(f"disk I/O counters unavailable: {exc}")
        return
    for name in sorted(counters):
        c = counters[name]
        facts.io.add(
            name=name,
            read_count=int(c.read_count),
            write_count=int(c.write_count),
            read_bytes=int(c.read_bytes),
            write_bytes=int(c.write_bytes),
            read_time_ms=int(getattr(c, "read_time", 0)),
            write_time_ms=int(getattr(c, "write_time", 0)),
            busy_time_ms=int(getattr(c, "busy_time", 0)),  # Linux and FreeBSD only
        )
