"""SQLite writes of one process: small writes that wait share one commit, each in its own
savepoint, and each caller returns only once its write is committed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.storage import NotFound, Store, StoreError
from collector.storage.group_commit import GroupCommit
from tests.collector.test_storage_bundles import make_agent, make_bundle


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'casefile.db'}")
    try:
        yield store
    finally:
        store.close()


def _group(store: Store) -> GroupCommit:
    group = store._group
    assert group is not None
    return group


def _queued_behind_held_lock(store: Store, writes: list[Callable[[], object]]) -> list[object]:
    """Run ``writes`` on threads while the process's writer lock is held, so the first
    leads a batch of one (blocked on the lock) and the rest queue; then let go."""
    group = _group(store)
    results: list[object] = [None] * len(writes)

    def call(i: int) -> None:
        try:
            results[i] = writes[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(writes))]
    with store._writer:
        threads[0].start()
        deadline = time.monotonic() + 10
        while not group._leading:
            assert time.monotonic() < deadline, "the first write never led a batch"
            time.sleep(0.005)
        for t in threads[1:]:
            t.start()
        while len(group._waiting) < len(writes) - 1:
            assert time.monotonic() < deadline, "the writes never queued"
            time.sleep(0.005)
        assert all(r is None for r in results), "a write returned before its commit could run"
    for t in threads:
        t.join(10)
    return results


def test_writes_waiting_on_a_commit_share_the_next_one(sqlite_store: Store) -> None:
    store, group = sqlite_store, _group(sqlite_store)
    before = (group.batches, group.writes)
    writes: list[Callable[[], object]] = [
        lambda i=i: store.audit(actor=f"tok-{i}", action="query.list_hosts", outcome="ok")  # type: ignore[misc]
        for i in range(20)
    ]
    results = _queued_behind_held_lock(store, writes)
    assert not [r for r in results if isinstance(r, Exception)]
    # The first alone (it led while the lock was held), then the 19 that queued: two commits.
    assert (group.batches - before[0], group.writes - before[1]) == (2, 20)
    stored = {r.actor for r in store.list_audit(100, action="query.list_hosts")}
    assert stored == {f"tok-{i}" for i in range(20)}
    # Every caller got its own row back, with its own id.
    assert len({r.id for r in results if not isinstance(r, Exception)}) == 20  # type: ignore[attr-defined]


def test_a_failing_write_in_a_shared_commit_fails_alone(sqlite_store: Store) -> None:
    store = sqlite_store
    agent = make_agent(store)
    good = make_bundle(agent)
    orphan = make_bundle(agent)
    orphan = orphan.__class__(**{**vars(orphan), "agent_id": "ag_" + "0" * 16})  # no such agent: FK fails
    writes: list[Callable[[], object]] = [
        lambda: store.audit(actor="first", action="query.list_hosts", outcome="ok"),
        lambda: store.insert_bundle(good, facts_pb=b"", manifest_json="{}"),
        lambda: store.insert_bundle(orphan, facts_pb=b"", manifest_json="{}"),
        lambda: store.audit(actor="last", action="query.list_hosts", outcome="ok"),
    ]
    results = _queued_behind_held_lock(store, writes)
    assert isinstance(results[2], StoreError), results[2]
    assert results[1] == (good, True)
    assert store.get_bundle(good.bundle_id) == good
    assert {r.actor for r in store.list_audit(10, action="query.list_hosts")} == {"first", "last"}
    with pytest.raises(NotFound):
        store.get_bundle(orphan.bundle_id)


def test_one_writer_alone_commits_at_once(sqlite_store: Store) -> None:
    store, group = sqlite_store, _group(sqlite_store)
    before = group.batches
    rec = store.audit(actor="alone", action="query.list_hosts", outcome="ok")
    assert group.batches == before + 1
    # Committed: another connection (another process would see the same) reads it.
    other = Store.open(str(store.engine.url))
    try:
        assert [r.id for r in other.list_audit(1, actor="alone")] == [rec.id]
    finally:
        other.close()


def test_urgent_writes_go_ahead_of_those_waiting(sqlite_store: Store) -> None:
    """An audit row (urgent) waiting behind a commit forms the next batch alone; the
    bundles' writes that waited with it, before it too, share the batch after."""
    store, group = sqlite_store, _group(sqlite_store)
    ran: list[tuple[str, int]] = []

    def write(name: str, urgent: bool = False) -> Callable[[], object]:
        return lambda: group.run(lambda _conn: ran.append((name, group.batches)), urgent=urgent)

    before = group.batches
    writes = [write("first"), write("b1"), write("b2"), write("audit", urgent=True), write("b3"), write("b4")]
    results = _queued_behind_held_lock(store, writes)
    assert not [r for r in results if isinstance(r, Exception)]
    batch_of = {name: n - before for name, n in ran}
    assert batch_of == {"first": 0, "audit": 1, "b1": 2, "b2": 2, "b3": 2, "b4": 2}
    assert group.batches - before == 3
    # The real audit row takes the same path and is stored.
    rec = store.audit(actor="urgent", action="query.list_hosts", outcome="ok")
    assert [r.id for r in store.list_audit(1, actor="urgent")] == [rec.id]


def test_a_stream_of_urgent_writes_does_not_starve_the_others(sqlite_store: Store) -> None:
    """An urgent write arriving while an urgent-only batch commits does not go ahead
    again: the next batch takes it with the bundles' writes that were waiting."""
    store, group = sqlite_store, _group(sqlite_store)
    ran: list[tuple[str, int]] = []
    brought: list[threading.Thread] = []

    def write(name: str, urgent: bool = False) -> Callable[[], object]:
        return lambda: group.run(lambda _conn: ran.append((name, group.batches)), urgent=urgent)

    def urgent_bringing_another(_conn: object) -> None:
        ran.append(("a1", group.batches))
        t = threading.Thread(target=write("a2", urgent=True))
        t.start()
        brought.append(t)
        deadline = time.monotonic() + 10
        while not any(p.urgent for p in group._waiting):  # a2 queues while this batch runs
            assert time.monotonic() < deadline, "the second urgent write never queued"
            time.sleep(0.005)

    before = group.batches
    writes = [write("first"), write("b1"), lambda: group.run(urgent_bringing_another, urgent=True), write("b2")]
    results = _queued_behind_held_lock(store, writes)
    for t in brought:
        t.join(10)
    assert not [r for r in results if isinstance(r, Exception)]
    batch_of = {name: n - before for name, n in ran}
    assert batch_of == {"first": 0, "a1": 1, "b1": 2, "b2": 2, "a2": 2}
    assert group.batches - before == 3


class _Interrupted(BaseException):
    pass


def test_an_urgent_write_interrupted_while_waiting_leaves_the_queue(sqlite_store: Store) -> None:
    """A caller leaving ``run`` while it waits (an interrupt in a command's main thread)
    takes its write out of the queue: the writes after it still commit."""
    store, group = sqlite_store, _group(sqlite_store)
    real_wait = group._cv.wait

    def wait(timeout: float | None = None) -> bool:
        if threading.current_thread().name == "interrupted":
            raise _Interrupted()
        return real_wait(timeout)

    group._cv.wait = wait  # type: ignore[method-assign]
    outcome: dict[str, object] = {}

    def run(name: str, urgent: bool) -> None:
        try:
            outcome[name] = group.run(lambda _conn: name, urgent=urgent)
        except BaseException as exc:
            outcome[name] = exc

    with store._writer:
        first = threading.Thread(target=run, args=("first", False))
        first.start()
        deadline = time.monotonic() + 10
        while not group._leading:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        gone = threading.Thread(target=run, args=("urgent", True), name="interrupted")
        gone.start()
        gone.join(10)
        later = threading.Thread(target=run, args=("later", False))
        later.start()
        while len(group._waiting) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    first.join(10)
    later.join(10)
    assert isinstance(outcome["urgent"], _Interrupted)
    assert outcome["first"] == "first" and outcome["later"] == "later"
    assert group._waiting == [] and group._urgent == 0
