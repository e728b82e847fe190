"""Plugins found through real ``casefile.collectors`` entry points of a real (tiny) dist."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.collect import ENTRY_POINT_GROUP, CollectionSpec, registered_collectors, run_collection
from agent.errors import CollectionError
from protos import facts_pb2

Status = facts_pb2.CollectorStatus

PLUGIN_MODULE = """
from __future__ import annotations

from agent.collect import CollectContext, Collector


class Greeting(Collector):
    name = "greeting"
    description = "a plugin that leaves a note"
    budget_s = 1.0

    def collect(self, ctx: CollectContext) -> None:
        ctx.add_artifact("greeting/hello.txt", b"hi")


class Copycat(Collector):
    name = "cpu"
    description = "a plugin that takes a built-in name"

    def collect(self, ctx: CollectContext) -> None:
        return None


not_a_collector = 42
"""


def _install(root: Path, dist: str, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution: a dist-info folder on sys.path is all it takes."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}\n")


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "casefile_test_plugin.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    sys.modules.pop("casefile_test_plugin", None)
    registered_collectors(refresh=True)


def test_plugins_load_and_broken_ones_become_error_entries(plugin_path: Path) -> None:
    _install(
        plugin_path,
        "casefile_test_plugin",
        {
            "greeting": "casefile_test_plugin:Greeting",
            "missing": "casefile_no_such_module:Thing",
            "not_a_class": "casefile_test_plugin:not_a_collector",
        },
    )
    registry = registered_collectors(refresh=True)
    assert "greeting" in [c.name for c in registry.collectors]
    broken = {b.name: b.error for b in registry.broken}
    assert set(broken) == {"missing", "not_a_class"}
    assert "ModuleNotFoundError" in broken["missing"]
    assert "not a Collector subclass" in broken["not_a_class"]

    spec = CollectionSpec(only=("greeting", "missing", "not_a_class", "memory"))
    result = run_collection(spec)
    by = {s.name: s for s in result.statuses}
    assert by["greeting"].state == Status.OK
    assert by["missing"].state == Status.ERROR and "casefile_no_such_module" in by["missing"].error
    assert by["not_a_class"].state == Status.ERROR
    assert by["memory"].state == Status.OK
    assert [(a.collector, a.path, a.data) for a in result.artifacts] == [
        ("greeting", "greeting/hello.txt", b"hi")
    ]

    # A broken plugin's name is a known name: it can be excluded like any other.
    quiet = run_collection(CollectionSpec(only=("greeting",), exclude=("missing",)))
    assert {s.name: s.state for s in quiet.statuses}["missing"] == Status.SKIPPED


def test_plugin_taking_a_builtin_name_is_a_clear_error(plugin_path: Path) -> None:
    _install(plugin_path, "casefile_copycat", {"copycat": "casefile_test_plugin:Copycat"})
    with pytest.raises(CollectionError, match="two collectors are named 'cpu'"):
        registered_collectors(refresh=True)
