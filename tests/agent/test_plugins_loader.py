"""One entry-point loader (``agent.plugins``) behind both registries: a broken collector
plugin and a broken rule plugin are reported the same way, by name and error, and the
run goes on. Real entry points of a real (tiny) installed distribution."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.analysis import BundleView, registered_rules, run_rules
from agent.collect import CollectionSpec, registered_collectors, run_collection
from agent.plugins import MAX_ERROR_CHARS, load_plugins
from protos import facts_pb2
from tests.fixtures.analysis.crafted import healthy_snapshot

Status = facts_pb2.CollectorStatus

# Exits the interpreter on import: a plugin that does this must not take the run with it.
EXITS = "import sys\nsys.exit('plugin says bye')\n"
# Raises an error whose text is longer than any status or finding should carry.
NOISY = "raise RuntimeError('x' * 100_000)\n"
RULES = """
from agent.analysis import Rule


class Copy(Rule):
    code = "disk-full"  # a built-in rule's code
    title = "copy"
    description = "takes a built-in code"

    def evaluate(self, view):
        return []
"""


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name, text in (("cf_exits", EXITS), ("cf_noisy", NOISY), ("cf_rules", RULES)):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    info = tmp_path / "cf_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cf_broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[casefile.collectors]\nexits = cf_exits:Thing\nnoisy = cf_noisy:Thing\n"
        "[casefile.analyzers]\nexits = cf_exits:Thing\ncopy = cf_rules:Copy\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    for name in ("cf_exits", "cf_noisy", "cf_rules"):
        sys.modules.pop(name, None)
    registered_collectors(refresh=True)
    registered_rules(refresh=True)


def test_a_broken_plugin_is_named_with_its_error_in_both_registries(installed: Path) -> None:
    collectors = {b.name: b.error for b in registered_collectors(refresh=True).broken}
    rules = {b.name: b.error for b in registered_rules(refresh=True).broken}
    assert set(collectors) == {"exits", "noisy"} and set(rules) == {"exits", "copy"}
    # The same import failure reads the same in both.
    assert collectors["exits"] == rules["exits"]
    assert collectors["exits"] == "plugin 'cf_exits:Thing' failed to load: SystemExit: plugin says bye"
    assert collectors["noisy"].startswith("plugin 'cf_noisy:Thing' failed to load: RuntimeError: xxx")
    assert len(collectors["noisy"]) == MAX_ERROR_CHARS and collectors["noisy"].endswith("…")
    assert rules["copy"] == "plugin 'cf_rules:Copy' is declared wrongly: code 'disk-full' is already taken"


def test_the_runs_go_on(installed: Path) -> None:
    registered_collectors(refresh=True)
    result = run_collection(CollectionSpec(only=("exits", "noisy", "memory")))
    states = {s.name: s.state for s in result.statuses}
    assert [states[n] for n in ("exits", "noisy", "memory")] == [Status.ERROR, Status.ERROR, Status.OK]
    found = run_rules(BundleView.from_snapshot(healthy_snapshot(), []), registered_rules(refresh=True)).findings
    assert sorted((f.code, f.subject) for f in found) == [("analyzer-error", "copy"), ("analyzer-error", "exits")]


def test_without_a_key_name_clashes_are_left_to_the_registry(installed: Path) -> None:
    loaded, broken = load_plugins("casefile.analyzers", lambda obj: [])
    assert [b.name for b in broken] == ["exits"]
    assert "Copy" in [getattr(obj, "__name__", "") for obj in loaded]
