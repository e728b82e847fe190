"""SQLite writes in one process: one writer at a time, and small writes committed together.

SQLite has one writer per database file. Threads of one collector that compete for it
through SQLite's busy handler sleep in steps growing to 100 ms, so each writer waits far
longer than the lock is held; :func:`writer_lock` gives them one lock of ours per file
instead, and the next writer starts as soon as the last one commits.

Every commit is an fsync (``synchronous=FULL``: a receipt or an audit row is on disk
before the call returns), 0.2 ms on a quiet disk and 2-9 ms on a busy one. A thousand
agents answering a hunt at once, each bundle a row, its live request's ``done`` and its
analysis, while engineers' calls each add an audit row, queue one fsync behind another.
:class:`GroupCommit` lets the small writes that arrive while one commit is on its way
share the next transaction: each runs in its own SAVEPOINT (one failing rolls back only
itself and raises in its own caller), and each caller returns only after the shared
COMMIT, so what a caller is told is on disk still is. Under no load a batch is one write.

An ``urgent`` write (an audit row, which an engineer's call waits for before it answers)
goes ahead: while one waits, it and the other urgent ones form the next batch alone, and
the bundles' and analyses' writes wait for the batch after. Its caller then waits for the
commit on its way and one short commit of its own, not for a batch of uploads' writes too.
Ahead by one batch only: the batch after an urgent-only one takes every write waiting,
urgent or not, so a stream of engineers' calls never starves the uploads' writes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

from collector.storage.migrations import IMMEDIATE

__all__ = ["GroupCommit", "writer_lock"]

_T = TypeVar("_T")

_writers: dict[str, threading.RLock] = {}
_writers_lock = threading.Lock()


def writer_lock(engine: Engine) -> contextlib.AbstractContextManager[Any]:
    """This process's lock for writing the engine's SQLite file (none for PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    path = os.path.realpath(str(engine.url.database))
    with _writers_lock:
        # Re-entrant: a thread already writing (the stats refresh after an insert) may write again.
        return _writers.setdefault(path, threading.RLock())


@dataclass(eq=False)
class _Pending(Generic[_T]):
    fn: Callable[[Connection], _T]
    urgent: bool = False
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit:
    """Run ``fn(conn)`` in a write transaction shared with the writes waiting meanwhile.

    Leader and followers: a caller that finds no batch running takes every write waiting
    (its own among them), runs them under the writer lock in one transaction and wakes
    the others; a caller whose write is still waiting when that batch ends leads the next.
    No thread ever runs writes after its own is done, so none is kept busy by the others.
    A ``fn`` must only use ``conn`` (no other store call: that would wait for itself).
    """

    def __init__(self, engine: Engine, lock: contextlib.AbstractContextManager[Any], max_batch: int = 256) -> None:
        self._engine = engine
        self._lock = lock
        self._max = max_batch
        self._cv = threading.Condition()
        self._waiting: list[_Pending[Any]] = []
        self._leading = False
        self._urgent = 0  # urgent writes waiting
        self._after_urgent = False  # the last batch was urgent-only: the next one is open to all
        self.batches = 0  # transactions committed, for tests and benchmarks
        self.writes = 0

    def run(self, fn: Callable[[Connection], _T], *, urgent: bool = False) -> _T:
        me: _Pending[_T] = _Pending(fn, urgent)
        batch: list[_Pending[Any]] = []
        with self._cv:
            self._waiting.append(me)
            if urgent:
                self._urgent += 1
            # A write that is not urgent lets waiting urgent ones lead the next batch,
            # unless the last batch was theirs alone.
            try:
                while not me.done and (self._leading or (self._urgent and not urgent and not self._after_urgent)):
                    self._cv.wait()
            except BaseException:  # interrupted while waiting (KeyboardInterrupt): leave the queue
                if not me.done:
                    self._waiting.remove(me)
                    self._urgent -= urgent
                    self._cv.notify_all()
                raise
            if not me.done:  # lead: this write first, then those waiting longest
                self._leading = True
                self._waiting.remove(me)
                urgent_only = urgent and not self._after_urgent
                self._after_urgent = urgent_only
                others = [p for p in self._waiting if p.urgent] if urgent_only else self._waiting
                batch = [me, *others[: self._max - 1]]
                taken = set(map(id, batch))
                self._waiting = [p for p in self._waiting if id(p) not in taken]
                self._urgent -= sum(p.urgent for p in batch)
        if batch:
            try:
                self._commit(batch)
            finally:
                with self._cv:
                    for p in batch:
                        p.done = True
                    self._leading = False
                    self._cv.notify_all()
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[no-any-return]

    def _commit(self, batch: list[_Pending[Any]]) -> None:
        try:
            with self._lock, self._engine.connect() as conn:
                conn.execution_options(**{IMMEDIATE: True})
                with conn.begin():
                    if len(batch) == 1:
                        # Alone: its failure rolls back the whole transaction, which is
                        # all a savepoint would do (two statements fewer per lone write).
                        batch[0].result = batch[0].fn(conn)
                    else:
                        for p in batch:
                            try:
                                with conn.begin_nested():
                                    p.result = p.fn(conn)
                            except Exception as exc:  # this write only: its savepoint is rolled back
                                p.error = exc
        except BaseException as exc:  # BEGIN, COMMIT or a lone write failed: none of them is stored
            for p in batch:
                if p.error is None:
                    p.error = exc
                    p.result = None
            if not isinstance(exc, Exception):
                raise
        self.batches += 1
        self.writes += len(batch)
