"""Framework upgrades: file-backed artifacts and the run's temp area, the resource guard,
the total budget, and a hung command that still leaves a sealed bundle."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import psutil
import pytest

from agent.bundle.reader import verify_bundle
from agent.collect import CollectContext, CollectionSpec, Collector, run_collection, start_collection
from agent.errors import CollectionError
from agent.keys import SigningKey
from agent.oneshot import PrivacyOptions, collect_bundle, prepare_collection
from agent.redact import RedactionError
from protos import facts_pb2

Status = facts_pb2.CollectorStatus


class Spooler(Collector):
    name = "spooler"
    description = "writes a file-backed artifact and a bytes one"
    budget_s = 5.0

    def collect(self, ctx: CollectContext) -> None:
        path = ctx.temp_path("big.log")
        with open(path, "wb") as fh:
            for n in range(10_000):
                fh.write(b"line %d\n" % n)
        ctx.add_artifact_file("logs/big.log", path)
        ctx.add_artifact("commands/uname.txt", b"Linux\n", kind="command")


class Priorities(Collector):
    name = "priorities"
    description = "records the nice and io priority its thread runs at"
    budget_s = 5.0
    seen: ClassVar[list[tuple[int, int]]] = []

    def collect(self, ctx: CollectContext) -> None:
        # ioprio is per thread on Linux: ask for this thread's, by its thread id.
        me = psutil.Process(threading.get_native_id())
        ioclass = int(me.ionice()[0]) if sys.platform.startswith("linux") else -1
        Priorities.seen.append((os.nice(0), ioclass))


class Sleeper(Collector):
    name = "sleeper"
    description = "takes longer than the run may"
    budget_s = 10.0

    def collect(self, ctx: CollectContext) -> None:
        time.sleep(3)


class Quick(Collector):
    name = "quick"
    description = "returns at once"
    budget_s = 1.0

    def collect(self, ctx: CollectContext) -> None:
        return None


def test_file_backed_artifacts_stream_and_go_away_on_close() -> None:
    result = run_collection(CollectionSpec(), collectors=[Spooler])
    assert result.statuses[0].state == Status.OK, result.statuses[0].error
    big, small = result.artifacts
    assert (big.collector, big.path, big.kind) == ("spooler", "logs/big.log", "log")
    assert big.source is not None and big.content is None
    assert big.size == big.source.stat().st_size == result.sizes["spooler"] - small.size
    with big.open() as fh:
        first = fh.readline()
    assert first == b"line 0\n" and big.data.endswith(b"line 9999\n")
    assert (small.kind, small.size, small.data) == ("command", 6, b"Linux\n")
    with small.open() as fh:
        assert fh.read() == b"Linux\n"
    with result:
        pass  # the context manager closes
    assert not big.source.exists() and not big.source.parent.exists()
    with pytest.raises(OSError):
        big.open()
    result.close()  # twice is fine


def test_temp_names_and_kinds_are_checked() -> None:
    ctx = CollectContext("probe", CollectionSpec(), time.monotonic() + 5)
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(CollectionError, match="bad temp file name"):
            ctx.temp_path(bad)
    with pytest.raises(CollectionError, match="kind"):
        ctx.add_artifact("x.txt", b"", kind="secret")  # type: ignore[arg-type]
    with pytest.raises(CollectionError, match="unreadable"):
        ctx.add_artifact_file("x.txt", Path("/nonexistent/casefile"))
    path = ctx.temp_path("a.txt")
    path.write_bytes(b"abc")
    ctx.add_artifact_file("a.txt", path)
    with pytest.raises(CollectionError, match="added twice"):
        ctx.add_artifact("a.txt", b"again")


@pytest.mark.skipif(not hasattr(os, "nice"), reason="POSIX nice")
def test_collectors_run_at_low_priority_and_the_caller_is_restored() -> None:
    before = os.nice(0)
    Priorities.seen.clear()
    result = run_collection(CollectionSpec(), collectors=[Priorities])
    ((nice, ioclass),) = Priorities.seen
    assert nice == min(before + 10, 19)
    if sys.platform.startswith("linux"):
        assert ioclass == psutil.IOPRIO_CLASS_IDLE
    assert "cpu priority lowered" in result.guard
    if os.geteuid() == 0:
        assert os.nice(0) == before  # only root may raise it back
    Priorities.seen.clear()
    run_collection(CollectionSpec(options={"lower_priority": False}), collectors=[Priorities])
    assert Priorities.seen[0][0] == os.nice(0)
    with pytest.raises(CollectionError, match="lower_priority"):
        run_collection(CollectionSpec(options={"lower_priority": "yes"}), collectors=[Quick])


def test_total_budget_times_out_what_is_still_running() -> None:
    spec = CollectionSpec(total_budget_s=0.5)
    result = run_collection(spec, collectors=[Sleeper, Quick])
    by = {s.name: s for s in result.statuses}
    assert by["quick"].state == Status.OK
    assert by["sleeper"].state == Status.TIMEOUT
    assert "total budget of 0.5 s" in by["sleeper"].error
    assert result.spec_dict()["total_budget_s"] == 0.5
    for bad in (0, -1, True, "5", 1e9):
        with pytest.raises(CollectionError, match="total_budget_s"):
            CollectionSpec(total_budget_s=bad)  # type: ignore[arg-type]


def test_a_hung_command_is_killed_and_the_bundle_still_seals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A journalctl that never answers, found first on PATH: the real logs collector runs it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pidfile = tmp_path / "hung.pid"
    fake = bin_dir / "journalctl"
    fake.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    collected = collect_bundle(
        key=SigningKey.generate(),
        output_dir=tmp_path / "out",
        spec=CollectionSpec(only=("logs",), budgets={"logs": 2.0}),
    )
    verify_bundle(collected.bundle.path)
    journal = {s.name: s for s in collected.result.snapshot.logs.sources}["journal"]
    assert "time budget" in journal.error
    logs_status = {s.name: s for s in collected.result.statuses}["logs"]
    assert logs_status.state == Status.OK, logs_status.error
    pid = int(pidfile.read_text())
    for _ in range(100):
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the hung journalctl is still running")


class _Window(Collector):
    name = "window"
    description = "sleeps through a short sampling window"
    budget_s = 2.0

    def collect(self, ctx: CollectContext) -> None:
        time.sleep(0.1)


def test_prepare_takes_a_collection_the_caller_started(tmp_path: Path) -> None:
    key = SigningKey.generate()
    running = start_collection(CollectionSpec(), collectors=[_Window])
    with prepare_collection(key=key, running=running) as prepared:
        assert [s.name for s in prepared.result.statuses] == ["window"]
        collected = prepared.seal(tmp_path, key)
    verify_bundle(collected.bundle.path, expected_key=key.public)


def test_prepare_refuses_a_spec_and_a_running_collection_together() -> None:
    running = start_collection(CollectionSpec(), collectors=[_Window])
    try:
        with pytest.raises(ValueError, match="not both"):
            prepare_collection(key=None, spec=CollectionSpec(), running=running, preview=True)
    finally:
        running.abandon()


def test_a_started_collection_is_abandoned_when_it_cannot_be_prepared() -> None:
    written: list[Path] = []

    class Scratch(_Window):
        name = "scratch"

        def collect(self, ctx: CollectContext) -> None:
            path = ctx.temp_path("scratch.txt")
            path.write_text("partial")
            written.append(path)
            time.sleep(0.1)

    running = start_collection(CollectionSpec(), collectors=[Scratch])
    deadline = time.monotonic() + 5
    while not written and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RedactionError):
        prepare_collection(key=None, running=running, privacy=PrivacyOptions(profile="no-such-profile"), preview=True)
    assert written and not written[0].exists()  # the run was given up and its files removed
