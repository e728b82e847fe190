"""A short, JSON-able summary of a snapshot: what ``casefile collect`` prints."""

from __future__ import annotations

from typing import Any

from protos import facts_pb2

__all__ = ["snapshot_summary"]

_STATE = facts_pb2.CollectorStatus.State


def _gib(n: int) -> float:
    return round(n / 1024**3, 2)


def snapshot_summary(s: facts_pb2.Snapshot) -> dict[str, Any]:
    """Key facts an engineer reads first; every value is plain JSON."""
    return {
        "host": {
            "hostname": s.host.hostname,
            "os": s.host.os_release or s.host.os,
            "kernel": s.host.kernel,
            "arch": s.host.arch,
            "uptime_h": round(s.host.uptime_seconds / 3600, 1),
            "virtualization": s.host.virtualization or ("yes" if s.host.virtualized else "none"),
        },
        "cpu": {
            "logical": s.cpu.logical_count,
            "physical": s.cpu.physical_count,
            "percent": round(s.cpu.total_percent, 1),
            "load": [round(s.cpu.load1, 2), round(s.cpu.load5, 2), round(s.cpu.load15, 2)],
        },
        "memory": {
            "total_gib": _gib(s.memory.total),
            "available_gib": _gib(s.memory.available),
            "percent": round(s.memory.percent, 1),
            "swap_total_gib": _gib(s.memory.swap_total),
            "swap_percent": round(s.memory.swap_percent, 1),
        },
        "disks": [
            {
                "mountpoint": p.mountpoint,
                "fstype": p.fstype,
                "total_gib": _gib(p.total),
                "percent": round(p.percent, 1),
                **({"error": p.error} if p.error else {}),
            }
            for p in s.disks.partitions
        ],
        "network": [
            {
                "name": i.name,
                "up": i.is_up,
                "addresses": [a.address for a in i.addresses if a.family in ("ipv4", "ipv6")],
                "errors": i.counters.errin + i.counters.errout,
                "drops": i.counters.dropin + i.counters.dropout,
            }
            for i in s.network.interfaces
        ],
        "collectors": [
            {
                "name": c.name,
                "status": _STATE.Name(c.state).lower(),
                "duration_ms": round(c.duration_ms, 1),
                **({"error": c.error} if c.error else {}),
            }
            for c in s.collectors
        ],
    }
