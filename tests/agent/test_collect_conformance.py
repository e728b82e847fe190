"""Every registered collector (built-ins and installed plugins) declares itself soundly and runs.

Like sos' conformance tests: the checks are spelled out here rather than trusting the
framework's own ``declaration_problems``, which is checked to agree.
"""

from __future__ import annotations

import inspect
import re

import pytest

from agent.collect import (
    KNOWN_PLATFORMS,
    CollectionSpec,
    Collector,
    declaration_problems,
    registered_collectors,
    run_collection,
)
from protos import facts_pb2

REGISTRY = registered_collectors(refresh=True)


def test_registry_loads_without_broken_plugins() -> None:
    assert [b.name for b in REGISTRY.broken] == []
    names = REGISTRY.names()
    assert len(names) == len(set(names))
    assert {"host", "cpu", "memory", "disks", "network"} <= set(names)


def test_each_snapshot_field_has_at_most_one_collector() -> None:
    fields = [c.facts_field for c in REGISTRY.collectors if c.facts_field is not None]
    assert len(fields) == len(set(fields))


@pytest.mark.parametrize("cls", REGISTRY.collectors, ids=lambda c: c.name)
def test_declarations(cls: type[Collector]) -> None:
    assert issubclass(cls, Collector) and not inspect.isabstract(cls)
    assert re.fullmatch(r"[a-z][a-z0-9_]*", cls.name), cls.name
    assert isinstance(cls.description, str) and cls.description.strip()
    assert isinstance(cls.budget_s, int | float) and 0 < cls.budget_s <= 60
    assert isinstance(cls.platforms, frozenset) and cls.platforms
    assert cls.platforms <= KNOWN_PLATFORMS
    assert isinstance(cls.default, bool)
    assert cls.collect is not Collector.collect
    if cls.facts_field is None:
        assert cls.facts_type is None
    else:
        field = facts_pb2.Snapshot.DESCRIPTOR.fields_by_name.get(cls.facts_field)
        assert field is not None, f"Snapshot has no field {cls.facts_field!r}"
        assert not field.is_repeated
        assert cls.facts_type is not None
        assert field.message_type is cls.facts_type.DESCRIPTOR
        assert cls.facts_field not in ("collectors", "collected_at")
    assert declaration_problems(cls) == []


def test_default_scope_fits_a_quick_collection() -> None:
    # The default scope is what every one-shot run and live snapshot pays for.
    defaults = [c for c in REGISTRY.collectors if c.default]
    assert defaults and all(c.budget_s <= 10 for c in defaults)


# Short windows, so that running every collector stays a matter of seconds.
QUICK = {
    "cpu_sample_s": 0.05,
    "processes_sample_s": 0.05,
    "retrans_sample_s": 0.05,
    "frag_budget_s": 0.2,
    "timeseries_interval_s": 0.05,
    "logs_since_s": 3600.0,
}


@pytest.mark.parametrize("cls", REGISTRY.collectors, ids=lambda c: c.name)
def test_each_collector_runs_alone_on_this_machine(cls: type[Collector]) -> None:
    """Run for real, by itself: OK with its facts filled, or a status that says why not, in its budget."""
    with run_collection(CollectionSpec(only=(cls.name,), options=QUICK)) as result:
        status = {s.name: s for s in result.statuses}[cls.name]
        OK, UNSUPPORTED = facts_pb2.CollectorStatus.OK, facts_pb2.CollectorStatus.UNSUPPORTED
        assert status.state in (OK, UNSUPPORTED), f"{cls.name}: {status.error}"
        if status.state == UNSUPPORTED:
            assert status.error.strip(), f"{cls.name} is unsupported without saying why"
            return
        assert status.duration_ms <= cls.budget_s * 1000 + 500, status.duration_ms
        if cls.facts_field is not None:
            assert result.snapshot.HasField(cls.facts_field), f"{cls.name} filled no {cls.facts_field}"
            facts = getattr(result.snapshot, cls.facts_field)
            assert facts.ByteSize() > 0, f"{cls.name}: empty {cls.facts_field}"
        else:
            assert result.artifacts, f"{cls.name} has no facts field and produced no artifact"
        assert all(a.collector == cls.name for a in result.artifacts)
        for name, _ in result.warnings:
            assert name == cls.name
