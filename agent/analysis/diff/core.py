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
    ("listening_ports", ("netdepth",), _each("listening_ports", sec.ports)),
    ("failed_services", ("services",), _each("failed_services", sec.services)),
    ("interfaces", ("network",), _each("interfaces", sec.interfaces)),
)


def _rests_on(f: Finding) -> tuple[set[str], bool]:
    """(collectors whose facts a finding rests on, whether it rests on fragmentation figures)."""
    collectors: set[str] = set()
    frag = False
    for e in f.evidence:
        if isinstance(e, Evidence):
            collectors.add(collector_of_fact(e.fact_path))
            frag = frag or e.fact_path.startswith("fragmentation.")
        else:
            collectors.add("logs")
    return collectors, frag


def _findings(a: BundleView, b: BundleView, ca: Coverage, cb: Coverage, frag: DiffSection) -> DiffSection:
    fa = {f.key: f for f in run_rules(a).findings}
    fb = {f.key: f for f in run_rules(b).findings}
    partial = {n.key: n.reason for n in frag.not_compared}
    skipped: list[NotCompared] = []
    ra: sec.Records = {}
    rb: sec.Records = {}
    for key in sorted(set(fa) | set(fb)):
        collectors: set[str] = set()
        on_frag = False
        for f in (fa.get(key), fb.get(key)):
            if f is not None:
                got, fr = _rests_on(f)
                collectors |= got
                on_frag = on_frag or fr
        subject = (fa.get(key) or fb[key]).subject
        why = not_collected(ca, cb, tuple(sorted(collectors)))
        if why is None and on_frag and ("" in partial or subject in partial):
            why = f"rests on fragmentation figures not compared: {partial.get(subject) or partial.get('')}"
        if why is not None:
            if key in fa and key in fb and fa[key].severity == fb[key].severity:
                continue  # the same in both: nothing to say
            skipped.append(NotCompared(key, why))
            continue
        if key in fa:
            ra[key] = {"severity": Measure(fa[key].severity)}
        if key in fb:
            rb[key] = {"severity": Measure(fb[key].severity)}
    return sec.compare("findings", ra, rb, not_compared=skipped)


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
    sections.append(_findings(a, b, ca, cb, next(s for s in sections if s.name == "fragmentation")))
    return DiffResult(
        host_a=host_a,
        host_b=host_b,
        bundle_a=a.snapshot.bundle_id,
        bundle_b=b.snapshot.bundle_id,
        collected_a=a.snapshot.collected_at.ToJsonString() if a.snapshot.HasField("collected_at") else "",
        collected_b=b.snapshot.collected_at.ToJsonString() if b.snapshot.HasField("collected_at") else "",
        sections=tuple(sections),
    )
