"""``diff_bundles``: every section, each only where both bundles collected its facts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.analysis.diff import sections as sec
from agent.analysis.diff.coverage import Coverage, collector_of_fact, not_collected
from agent.analysis.diff.fragmentation import fragmentation
from agent.analysis.diff.model import DiffResult, DiffSection, Measure, NotCompared
from agent.analysis.diff.processes import processes
from agent.analysis.errors import DifferentHostsError
from agent.analysis.findings import run_rules
from agent.analysis.model import Evidence, Finding

if TYPE_CHECKING:
    from agent.analysis.view import BundleView
    from protos import facts_pb2

__all__ = ["diff_bundles"]

Pair = Callable[["facts_pb2.Snapshot", "facts_pb2.Snapshot"], DiffSection]


def _each(name: str, fn: Callable[[facts_pb2.Snapshot], sec.Records], describe: bool = False) -> Pair:
    return lambda a, b: sec.compare(name, fn(a), fn(b), describe=describe)


def _cpu(a: facts_pb2.Snapshot, b: facts_pb2.Snapshot) -> DiffSection:
    ra, rb = sec.cpu(a, b)
    return sec.compare("cpu", ra, rb)


# (section, the collectors whose facts it compares, how)
_SECTIONS: tuple[tuple[str, tuple[str, ...], Pair], ...] = (
    ("os", ("host",), _each("os", sec.host)),
    ("cpu", ("cpu",), _cpu),
    ("load", ("cpu",), _each("load", sec.load)),
    ("memory", ("memory",), _each("memory", sec.memory)),
    ("swap", ("memory",), _each("swap", sec.swap)),
    ("filesystems", ("disks",), _each("filesystems", sec.filesystems, describe=True)),
    ("fragmentation", ("fragmentation",), fragmentation),
    ("processes", ("processes",), processes),
    ("listening_ports", ("netdepth",), _each("listening_ports", sec.ports, describe=True)),
    ("failed_services", ("services",), _each("failed_services", sec.services, describe=True)),
    ("interfaces", ("network",), _each("interfaces", sec.interfaces)),
)


# Facts the sections compare, by fact path prefix. A finding that rests only on these,
# while its sections show no change, moved with noise across a rule's threshold
# (CPU at 97 % then 100 %: "warning" then "critical"): not a change of the machine.
_COMPARED_FACTS: tuple[tuple[str, str], ...] = (
    ("cpu.load", "load"), ("cpu.total_percent", "cpu"), ("cpu.times_percent", "cpu"),
    ("cpu.logical_count", "cpu"), ("timeseries.samples", "cpu"),
    *((f"memory.{f}", "memory") for f in ("percent", "available", "total", "used")),
    *((f"memory.{f}", "swap") for f in ("swap_percent", "swap_used", "swap_total")),
    ("disks.partitions", "filesystems"), ("fragmentation.filesystems", "fragmentation"),
    ("processes.top_", "processes"), ("services.failed", "failed_services"),
    ("host.boot_time", "os"), ("host.uptime_seconds", "os"),  # uptime always grows; a reboot shows as boot time
)


def _rests_on(f: Finding) -> tuple[set[str], set[str], bool]:
    """(collectors whose facts a finding rests on, the sections comparing some of them, whether they compare all)."""
    collectors: set[str] = set()
    sections: set[str] = set()
    covered = True
    for e in f.evidence:
        if not isinstance(e, Evidence):
            collectors.add("logs")
            covered = False
            continue
        name = collector_of_fact(e.fact_path)
        if name:
            collectors.add(name)
        section = next((s for prefix, s in _COMPARED_FACTS if e.fact_path.startswith(prefix)), None)
        if section is not None:
            sections.add(section)
        elif name is not None:
            covered = False
    return collectors, sections, covered and bool(sections)


def _why_not(found: list[Finding], ca: Coverage, cb: Coverage, by_name: dict[str, DiffSection]) -> str | None:
    """Why a finding that differs is not a change (see ``_COMPARED_FACTS``), or None when it is one."""
    collectors: set[str] = set()
    sections: set[str] = set()
    covered = True
    for f in found:
        got, secs, all_compared = _rests_on(f)
        collectors |= got
        sections |= secs
        covered = covered and all_compared
    why = not_collected(ca, cb, tuple(sorted(collectors)))
    if why:
        return why
    subject = found[0].subject
    for name in sorted(sections):
        for n in by_name[name].not_compared:
            if n.key in ("", subject):
                return f"rests on {name} figures not compared: {n.reason}"
    if covered and all(by_name[n].empty for n in sections):
        return f"the {', '.join(sorted(sections))} figures it rests on did not change beyond their noise"
    return None


def _findings(a: BundleView, b: BundleView, ca: Coverage, cb: Coverage, done: list[DiffSection]) -> DiffSection:
    fa = {f.key: f for f in run_rules(a).findings}
    fb = {f.key: f for f in run_rules(b).findings}
    by_name = {s.name: s for s in done}
    skipped: list[NotCompared] = []
    ra: sec.Records = {}
    rb: sec.Records = {}
    for key in sorted(set(fa) | set(fb)):
        before, after = fa.get(key), fb.get(key)
        if before is not None and after is not None and before.severity == after.severity:
            ra[key] = rb[key] = {"severity": Measure(before.severity)}
            continue
        why = _why_not([f for f in (before, after) if f is not None], ca, cb, by_name)
        if why is not None:
            was = before.severity if before else "none"
            now = after.severity if after else "none"
            skipped.append(NotCompared(key, f"{was} -> {now}: {why}"))
            continue
        if before is not None:
            ra[key] = {"severity": Measure(before.severity)}
        if after is not None:
            rb[key] = {"severity": Measure(after.severity)}
    return sec.compare("findings", ra, rb, describe=True, not_compared=skipped)


def diff_bundles(a: BundleView, b: BundleView, *, force: bool = False) -> DiffResult:
    """What changed from ``a`` (older) to ``b``; DifferentHostsError unless same host or ``force``."""
    host_a, host_b = a.hostname, b.hostname
    if host_a != host_b and not force:
        raise DifferentHostsError(
            f"bundles come from different hosts ({host_a or '?'} and {host_b or '?'}); pass --force to compare anyway",
            host_a=host_a,
            host_b=host_b,
        )
    ca, cb = Coverage.of(a), Coverage.of(b)
    sections: list[DiffSection] = []
    for name, collectors, fn in _SECTIONS:
        why = not_collected(ca, cb, collectors)
        sections.append(DiffSection(name, not_compared=(NotCompared("", why),)) if why else
                        fn(a.snapshot, b.snapshot))
    sections.append(_findings(a, b, ca, cb, sections))
    return DiffResult(
        host_a=host_a,
        host_b=host_b,
        bundle_a=a.snapshot.bundle_id,
        bundle_b=b.snapshot.bundle_id,
        collected_a=a.snapshot.collected_at.ToJsonString() if a.snapshot.HasField("collected_at") else "",
        collected_b=b.snapshot.collected_at.ToJsonString() if b.snapshot.HasField("collected_at") else "",
        sections=tuple(sections),
    )
