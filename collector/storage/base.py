"""Engine setup and the connection helpers every part of ``Store`` uses.

Writes on SQLite begin with ``BEGIN IMMEDIATE`` so concurrent writers queue on
``busy_timeout`` instead of failing when a deferred transaction tries to
upgrade its read lock; reads begin deferred and never block writers (WAL).
Within one process the writers of a database file first take one lock of ours,
and small frequent writes share their commit (``collector.storage.group_commit``,
measured with ``benchmarks/bench_hunt.py``); other processes still meet the busy
handler.
On PostgreSQL plain READ COMMITTED is enough: the statements that race
(``UPDATE … WHERE uses < max_uses``, ``INSERT … ON CONFLICT``) re-check under
the row lock inside the database.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Connection, Engine, Table, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite

from collector.storage.errors import InvalidArgument
from collector.storage.group_commit import GroupCommit, writer_lock
from collector.storage.migrations import IMMEDIATE, current_version
from collector.storage.schema import from_micros, to_micros

__all__ = ["Clock", "StoreBase", "make_engine", "opt_dt", "utc_now"]

_BUSY_TIMEOUT_MS = 10_000
_T = TypeVar("_T")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def opt_dt(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or "mode=memory" in url:
            raise InvalidArgument(
                f"in-memory SQLite ({url!r}) cannot be shared between threads; use a file URL"
            )
        _private_database(parsed.database)
        # The pool hands connections to whichever worker thread asks next; it keeps as many
        # as the collector has threads for store calls (opened only when needed), since a
        # connection closed and opened again costs its PRAGMAs and a thread beyond the
        # pool's size would wait for one.
        engine = create_engine(
            parsed, connect_args={"check_same_thread": False}, pool_size=40, max_overflow=20
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if backend == "postgresql":
        # pre_ping: a replica outlives database restarts and failovers.
        return create_engine(parsed, pool_pre_ping=True)
    raise InvalidArgument(
        f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}:"
        " use sqlite:/// or postgresql+psycopg://"
    )


def _private_database(path: str) -> None:
    """The SQLite file (token hashes, agent keys, customer facts, the audit log) is the
    owner's only: made 0600 before SQLite opens it, which gives its -wal and -shm files
    the same mode; an existing one, and those, are set to 0600."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        return  # no such folder: SQLite's own error says so when it opens the file
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for side in (path + "-wal", path + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(side, 0o600)


def _enable_wal(cur: Any) -> None:
    # WAL is persistent, so this runs once per new database file. Switching needs
    # an exclusive lock and SQLite does not call the busy handler for it, so
    # connections opening a fresh file at the same moment retry here.
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Driver-level autocommit: pysqlite's own implicit BEGIN would otherwise decide
    # when transactions start; _sqlite_on_begin takes that over.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        _enable_wal(cur)
    cur.execute("PRAGMA foreign_keys=ON")
    # FULL: a commit is on disk before it returns, so a receipt is never given for a row
    # that a power loss or an OS crash would undo (NORMAL under WAL could lose the last
    # commits; the agent deletes its copy on the receipt). It costs ~0.2 ms a commit here.
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class StoreBase:
    """Connection handling shared by the ``Store`` method groups."""

    def __init__(self, engine: Engine, *, clock: Clock = utc_now) -> None:
        self._engine = engine
        self._clock = clock
        self._pg = engine.dialect.name == "postgresql"
        self._writer = writer_lock(engine)
        self._group = GroupCommit(engine, self._writer) if not self._pg else None

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        return self._engine

    def schema_version(self) -> int:
        with self._read() as conn:
            return current_version(conn)

    def _rows_inserted(self, table: str, n: int = 1) -> None:
        """``n`` rows were added to ``table``; ``StatsMethods`` keeps SQLite's statistics by it."""

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer, self._engine.connect() as conn:
            conn.execution_options(**{IMMEDIATE: True})
            with conn.begin():
                yield conn

    def _write_grouped(self, fn: Callable[[Connection], _T], *, urgent: bool = False) -> _T:
        """``fn(conn)`` in a write transaction, on SQLite shared with the writes waiting
        meanwhile (:class:`GroupCommit`); committed when this returns. ``fn`` uses only ``conn``.
        ``urgent``: ahead of the writes waiting that are not (an audit row a caller waits for)."""
        if self._group is None:
            with self._write() as conn:
                return fn(conn)
        return self._group.run(fn, urgent=urgent)

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self._pg else sqlite.insert(table)

    def _now(self) -> int:
        return to_micros(self._clock())
