"""Every registered collector (built-ins and installed plugins) declares itself soundly.

Like sos' conformance tests: the checks are spelled out here rather than trusting the
framework's own ``declaration_problems``, which is checked to agree.
"""

from __future__ import annotations

import inspect
import re

import pytest

from agent.collect import KNOWN_PLATFORMS, Collector, declaration_problems, registered_collectors
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
