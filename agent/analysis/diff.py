"""Compare two bundles of the same host, fact by fact.

Each section compares keyed items (mounts by mount point, interfaces by name, ports
by protocol/address/port, ...) and reports what was added, removed or changed. Values
are rounded the way reports show them (percentages to 0.1) so that noise below what a
reader can see is not reported as a change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.analysis.errors import DifferentHostsError
from agent.analysis.findings import FindingsResult, run_rules

if TYPE_CHECKING:
    from agent.analysis.view import BundleView
    from protos import facts_pb2

__all__ = ["Change", "DiffResult", "DiffSection", "diff_bundles", "render_diff_text"]

Value = str | int | float | bool | None


@dataclass(frozen=True)
class Change:
    key: str
    field: str
    before: Value
    after: Value


@dataclass(frozen=True)
class DiffSection:
    name: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[Change, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": [{"key": c.key, "field": c.field, "before": c.before, "after": c.after} for c in self.changed],
        }


@dataclass(frozen=True)
class DiffResult:
    host_a: str
    host_b: str
    bundle_a: str
    bundle_b: str
    collected_a: str
    collected_b: str
    sections: tuple[DiffSection, ...] = field(default=())

    def section(self, name: str) -> DiffSection:
        return next(s for s in self.sections if s.name == name)

    @property
    def empty(self) -> bool:
        return all(s.empty for s in self.sections)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": {"host": self.host_a, "bundle_id": self.bundle_a, "collected_at": self.collected_a},
            "b": {"host": self.host_b, "bundle_id": self.bundle_b, "collected_at": self.collected_b},
            "sections": {s.name: s.to_dict() for s in self.sections},
        }


Record = dict[str, Value]


def _compare(name: str, a: Mapping[str, Record], b: Mapping[str, Record]) -> DiffSection:
    changed = [
        Change(key, f, a[key].get(f), b[key].get(f))
        for key in sorted(set(a) & set(b))
        for f in sorted(set(a[key]) | set(b[key]))
        if a[key].get(f) != b[key].get(f)
    ]
    return DiffSection(
        name=name,
        added=tuple(sorted(set(b) - set(a))),
        removed=tuple(sorted(set(a) - set(b))),
        changed=tuple(changed),
    )


def _r(x: float) -> float:
    return round(x, 1)


def _os(s: facts_pb2.Snapshot) -> dict[str, Record]:
    h = s.host
    return {"host": {"os": h.os, "os_release": h.os_release, "os_version": h.os_version, "kernel": h.kernel,
                     "arch": h.arch}}


def _filesystems(s: facts_pb2.Snapshot) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for p in s.disks.partitions:
        out[p.mountpoint] = {
            "device": p.device, "fstype": p.fstype, "total": p.total, "used_pct": _r(p.percent),
            "inodes_used_pct": _r(100.0 * p.inodes_used / p.inodes_total) if p.inodes_total else None,
            "error": p.error or None,
        }
    return out


def _fragmentation(s: facts_pb2.Snapshot) -> dict[str, Record]:
    return {
        f.mountpoint: {
            "pct_files_fragmented": _r(f.pct_files_fragmented),
            "pct_bytes_in_fragmented": _r(f.pct_bytes_in_fragmented),
            "fragments_mean": _r(f.fragments_mean), "fragments_p95": _r(f.fragments_p95),
            "fragments_max": f.fragments_max, "vendor_fragmented_pct": _r(f.vendor_fragmented_pct),
        }
        for f in s.fragmentation.filesystems
    }


def _ports(s: facts_pb2.Snapshot) -> dict[str, Record]:
    return {f"{p.protocol} {p.address}:{p.port}": {"process": p.process or None}
            for p in s.network_depth.listening}


def _services(s: facts_pb2.Snapshot) -> dict[str, Record]:
    return {f.name: {"state": f"{f.state}/{f.sub_state}", "result": f.result or None} for f in s.services.failed}


def _interfaces(s: facts_pb2.Snapshot) -> dict[str, Record]:
    return {
        n.name: {"up": n.is_up, "mtu": n.mtu, "speed_mbps": n.speed_mbps, "mac": n.mac,
                 "addresses": ", ".join(sorted(a.address for a in n.addresses))}
        for n in s.network.interfaces
    }


def _processes(s: facts_pb2.Snapshot) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for p in s.processes.top_cpu:
        out.setdefault(p.name, {})["top_cpu"] = True
    for p in s.processes.top_rss:
        out.setdefault(p.name, {})["top_rss"] = True
    return out


def _findings(result: FindingsResult) -> dict[str, Record]:
    return {f.key: {"severity": f.severity} for f in result.findings}


_SECTIONS: tuple[tuple[str, Callable[[facts_pb2.Snapshot], dict[str, Record]]], ...] = (
    ("os", _os),
    ("filesystems", _filesystems),
    ("fragmentation", _fragmentation),
    ("listening_ports", _ports),
    ("failed_services", _services),
    ("interfaces", _interfaces),
    ("top_processes", _processes),
)


def diff_bundles(a: BundleView, b: BundleView, *, force: bool = False) -> DiffResult:
    """What changed from ``a`` (older) to ``b``; DifferentHostsError unless same host or ``force``."""
    host_a, host_b = a.hostname, b.hostname
    if host_a != host_b and not force:
        raise DifferentHostsError(
            f"bundles come from different hosts ({host_a or '?'} and {host_b or '?'}); pass --force to compare anyway",
            host_a=host_a,
            host_b=host_b,
        )
    sections = [_compare(name, fn(a.snapshot), fn(b.snapshot)) for name, fn in _SECTIONS]
    sections.append(_compare("findings", _findings(run_rules(a)), _findings(run_rules(b))))
    return DiffResult(
        host_a=host_a,
        host_b=host_b,
        bundle_a=a.snapshot.bundle_id,
        bundle_b=b.snapshot.bundle_id,
        collected_a=a.snapshot.collected_at.ToJsonString() if a.snapshot.HasField("collected_at") else "",
        collected_b=b.snapshot.collected_at.ToJsonString() if b.snapshot.HasField("collected_at") else "",
        sections=tuple(sections),
    )


_WORDS = {"findings": ("new", "resolved"), "failed_services": ("now failed", "recovered")}


def render_diff_text(d: DiffResult) -> str:
    """Plain text, one line per change, grouped by section."""
    lines = [
        f"diff {d.host_a} {d.bundle_a} ({d.collected_a or '?'}) -> {d.host_b} {d.bundle_b} ({d.collected_b or '?'})"
    ]
    if d.empty:
        lines.append("no differences")
    for s in d.sections:
        if s.empty:
            continue
        plus, minus = _WORDS.get(s.name, ("added", "removed"))
        lines.append(f"{s.name.replace('_', ' ')}:")
        lines += [f"  + {plus}: {k}" for k in s.added]
        lines += [f"  - {minus}: {k}" for k in s.removed]
        lines += [f"  ~ {c.key} {c.field}: {c.before} -> {c.after}" for c in s.changed]
    return "\n".join(lines) + "\n"
