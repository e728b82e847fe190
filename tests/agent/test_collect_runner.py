"""The runner's contract, exercised with small collectors passed through the plugin API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from agent.collect import (
    KNOWN_PLATFORMS,
    CollectContext,
    CollectionSpec,
    Collector,
    current_platform,
    run_collection,
    start_collection,
)
from agent.collect.builtin import (
    BUILTIN_COLLECTORS,
    CpuCollector,
    DisksCollector,
    HostCollector,
    MemoryCollector,
    NetworkCollector,
)
from agent.errors import CollectionError
from protos import facts_pb2

BASICS = (HostCollector, CpuCollector, MemoryCollector, DisksCollector, NetworkCollector)

Status = facts_pb2.CollectorStatus
# Long enough that a run waiting for it would be obvious, and never reached in a pass.
_HANG_S = 60.0


class Raising(Collector):
    name = "raising"
    description = "always fails"
    budget_s = 2.0

    def collect(self, ctx: CollectContext) -> None:
        ctx.add_artifact("raising/partial.txt", b"half")
        raise ValueError("disk on fire")


class Elsewhere(Collector):
    name = "elsewhere"
    description = "guarded to a platform this is not"
    platforms = KNOWN_PLATFORMS - {current_platform()}

    def collect(self, ctx: CollectContext) -> None:
        raise AssertionError("the platform guard must stop this from running")


class Extra(Collector):
    name = "extra"
    description = "outside the default scope; writes an artifact"
    default = False

    def collect(self, ctx: CollectContext) -> None:
        ctx.warn("just so you know")
        ctx.add_artifact("extra/notes.txt", b"hello")


class WrongType(Collector):
    name = "wrong_type"
    description = "returns a message it did not declare"
    facts_field = "memory"
    facts_type = facts_pb2.MemoryFacts

    def collect(self, ctx: CollectContext) -> facts_pb2.CpuFacts:
        return facts_pb2.CpuFacts(logical_count=1)


class Hang:
    """A collector class that blocks until released, with hooks for the test to observe it."""

    def __init__(self, budget_s: float) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        hang = self

        class Hanging(Collector):
            name = "hanging"
            description = "blocks far past its budget"
            facts_field = "cpu"
            facts_type = facts_pb2.CpuFacts

            def collect(self, ctx: CollectContext) -> facts_pb2.CpuFacts:
                ctx.add_artifact("hanging/late.txt", b"too late")
                hang.entered.set()
                hang.release.wait(_HANG_S)
                return facts_pb2.CpuFacts(logical_count=99)

        Hanging.budget_s = budget_s
        self.cls = Hanging

    def finish(self) -> None:
        """Let the abandoned thread end and wait for it, so nothing outlives the test."""
        self.release.set()
        for t in threading.enumerate():
            if t.name == "casefile-collect-hanging":
                t.join(_HANG_S)


@pytest.fixture
def hang() -> Iterator[Hang]:
    h = Hang(budget_s=0.2)
    yield h
    h.finish()


def _by_name(statuses: tuple[facts_pb2.CollectorStatus, ...]) -> dict[str, Status]:
    return {s.name: s for s in statuses}


def test_exception_is_an_error_entry_and_others_still_run() -> None:
    result = run_collection(CollectionSpec(), collectors=[MemoryCollector, Raising])
    by = _by_name(result.statuses)
    assert by["raising"].state == Status.ERROR
    assert by["raising"].error == "ValueError: disk on fire"
    assert by["memory"].state == Status.OK
    assert result.snapshot.memory.total > 0
    assert result.artifacts == ()  # a failed collector's artifacts are dropped
    entry = next(e for e in result.status_dicts() if e["name"] == "raising")
    assert entry["status"] == "error" and entry["error"] == "ValueError: disk on fire"


def test_timeout_abandons_the_collector_and_drops_its_output(hang: Hang) -> None:
    result = run_collection(CollectionSpec(), collectors=[MemoryCollector, hang.cls])
    # The run came back while the collector was still blocked: it did not wait for it.
    assert hang.entered.is_set() and not hang.release.is_set()
    assert result.duration_s < _HANG_S
    by = _by_name(result.statuses)
    assert by["hanging"].state == Status.TIMEOUT
    assert "0.2 s" in by["hanging"].error
    assert by["memory"].state == Status.OK
    assert result.artifacts == ()
    hang.finish()
    # The late return must not reach the result it was abandoned by.
    assert not result.snapshot.HasField("cpu")
    assert result.snapshot.collectors[1].state == Status.TIMEOUT


def test_spec_budget_overrides_the_declared_one() -> None:
    h = Hang(budget_s=30.0)
    try:
        spec = CollectionSpec(budgets={"hanging": 0.1})
        result = run_collection(spec, collectors=[h.cls])
        assert result.statuses[0].state == Status.TIMEOUT
        assert "0.1 s" in result.statuses[0].error
        assert not h.release.is_set()
    finally:
        h.finish()


def test_platform_guard_reports_unsupported() -> None:
    result = run_collection(CollectionSpec(), collectors=[Elsewhere, MemoryCollector])
    by = _by_name(result.statuses)
    assert by["elsewhere"].state == Status.UNSUPPORTED
    assert by["elsewhere"].error == f"unsupported on {current_platform()}"
    assert by["memory"].state == Status.OK
    assert result.selected == ("memory",)


def test_only_selects_and_skips_the_rest() -> None:
    result = run_collection(CollectionSpec(only=("memory",)), collectors=BASICS)
    states = {s.name: s.state for s in result.statuses}
    assert states == {
        "host": Status.SKIPPED,
        "cpu": Status.SKIPPED,
        "memory": Status.OK,
        "disks": Status.SKIPPED,
        "network": Status.SKIPPED,
    }
    assert result.snapshot.HasField("memory") and not result.snapshot.HasField("host")
    assert [e["status"] for e in result.status_dicts()].count("skipped") == 4


def test_exclude_skips_named_collectors() -> None:
    spec = CollectionSpec(exclude=("cpu", "disks"))
    result = run_collection(spec, collectors=BASICS)
    by = _by_name(result.statuses)
    assert by["cpu"].state == Status.SKIPPED and by["disks"].state == Status.SKIPPED
    assert "excluded" in by["cpu"].error
    assert {by[n].state for n in ("host", "memory", "network")} == {Status.OK}


def test_non_default_collector_runs_only_when_asked() -> None:
    default = run_collection(CollectionSpec(), collectors=[MemoryCollector, Extra])
    assert _by_name(default.statuses)["extra"].state == Status.SKIPPED
    assert default.artifacts == ()

    asked = run_collection(CollectionSpec(only=("extra",)), collectors=[MemoryCollector, Extra])
    assert _by_name(asked.statuses)["extra"].state == Status.OK
    assert [(a.collector, a.path, a.data) for a in asked.artifacts] == [
        ("extra", "extra/notes.txt", b"hello")
    ]
    assert asked.warnings == (("extra", "just so you know"),)
    entry = next(e for e in asked.status_dicts() if e["name"] == "extra")
    assert entry["bytes"] == 5 and entry["warnings"] == ["just so you know"]


@pytest.mark.parametrize("field", ["only", "exclude", "budgets"])
def test_unknown_name_is_a_collection_error_listing_known_ones(field: str) -> None:
    value: object = {"nosuch": 1.0} if field == "budgets" else ("nosuch",)
    spec = CollectionSpec(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(CollectionError) as err:
        run_collection(spec, collectors=BUILTIN_COLLECTORS)
    message = str(err.value)
    assert "'nosuch'" in message and field in message
    assert all(c.name in message for c in BUILTIN_COLLECTORS)


def test_wrong_message_type_is_an_error() -> None:
    result = run_collection(CollectionSpec(), collectors=[WrongType])
    assert result.statuses[0].state == Status.ERROR
    assert "CpuFacts" in result.statuses[0].error and "MemoryFacts" in result.statuses[0].error
    assert not result.snapshot.HasField("memory")


def test_duplicate_names_are_refused() -> None:
    class Memory2(Collector):
        name = "memory"
        description = "a second collector under a taken name"

        def collect(self, ctx: CollectContext) -> None:
            return None

    with pytest.raises(CollectionError, match="two collectors are named 'memory'"):
        run_collection(CollectionSpec(), collectors=[MemoryCollector, Memory2])


def test_two_collectors_for_one_field_are_refused() -> None:
    class OtherMemory(MemoryCollector):
        name = "other_memory"

    with pytest.raises(CollectionError, match=r"both fill Snapshot\.memory"):
        run_collection(CollectionSpec(), collectors=[MemoryCollector, OtherMemory])


def test_badly_declared_collector_is_refused() -> None:
    class Bad(Collector):
        name = "Bad Name"
        description = ""
        budget_s = 0.0
        platforms = frozenset({"plan9"})

        def collect(self, ctx: CollectContext) -> None:
            return None

    with pytest.raises(CollectionError) as err:
        run_collection(CollectionSpec(), collectors=[Bad])
    for fragment in ("name", "description", "budget_s", "platforms"):
        assert fragment in str(err.value)


def test_bad_artifact_path_fails_that_collector() -> None:
    class Escaping(Collector):
        name = "escaping"
        description = "tries to write outside the bundle"

        def collect(self, ctx: CollectContext) -> None:
            ctx.add_artifact("../etc/passwd", b"x")

    result = run_collection(CollectionSpec(), collectors=[Escaping])
    assert result.statuses[0].state == Status.ERROR
    assert "CollectionError" in result.statuses[0].error
    assert "'../etc/passwd'" in result.statuses[0].error


def test_same_artifact_path_from_two_collectors_keeps_the_first() -> None:
    class Second(Extra):
        name = "second"

    result = run_collection(CollectionSpec(only=("extra", "second")), collectors=[Extra, Second])
    assert [(a.collector, a.path) for a in result.artifacts] == [("extra", "extra/notes.txt")]
    assert any(name == "second" and "dropped" in w for name, w in result.warnings)


def test_statuses_are_in_the_snapshot_and_json_able() -> None:
    result = run_collection(CollectionSpec(), collectors=[MemoryCollector, Raising, Elsewhere])
    assert [s.name for s in result.snapshot.collectors] == ["memory", "raising", "elsewhere"]
    entries = result.status_dicts()
    assert json.loads(json.dumps(entries)) == entries
    assert [e["status"] for e in entries] == ["ok", "error", "unsupported"]
    assert json.loads(json.dumps(result.spec_dict()))["selected"] == ["memory", "raising"]


# --- started, then waited for (the one-shot path works while collectors sleep) ----------


class Sleeper(Collector):
    name = "sleeper"
    description = "sleeps briefly, as a sampling window does"
    budget_s = 2.0

    def collect(self, ctx: CollectContext) -> None:
        time.sleep(0.2)


def test_a_started_collection_runs_while_the_caller_works() -> None:
    t0 = time.monotonic()
    running = start_collection(CollectionSpec(), collectors=[Sleeper])
    assert time.monotonic() - t0 < 0.15  # start does not wait for the window
    time.sleep(0.2)  # the caller's own work, overlapping the collector's
    result = running.wait()
    assert time.monotonic() - t0 < 0.35
    assert {s.name: s.state for s in result.statuses}["sleeper"] == Status.OK


class TempWriter(Collector):
    name = "temp_writer"
    description = "leaves a file in its temp directory, then sleeps"
    budget_s = 2.0
    written: ClassVar[list[Path]] = []

    def collect(self, ctx: CollectContext) -> None:
        path = ctx.temp_path("scratch.txt")
        path.write_text("partial")
        TempWriter.written.append(path)
        time.sleep(0.2)


def test_an_abandoned_collection_drops_its_files() -> None:
    TempWriter.written.clear()
    running = start_collection(CollectionSpec(), collectors=[TempWriter])
    deadline = time.monotonic() + 5
    while not TempWriter.written and time.monotonic() < deadline:
        time.sleep(0.01)
    assert TempWriter.written and TempWriter.written[0].exists()
    running.abandon()
    running.abandon()  # idempotent
    assert not TempWriter.written[0].exists()


def test_a_bad_spec_fails_before_anything_starts() -> None:
    with pytest.raises(CollectionError, match="unknown collector"):
        start_collection(CollectionSpec(only=("nonexistent",)), collectors=[Sleeper])
