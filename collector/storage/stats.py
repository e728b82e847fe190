"""Planner statistics on SQLite, so a filtered listing takes the narrowest index.

SQLite has no statistics until the application runs ANALYZE, and without them every
one-column equality looks equally selective: ``agent_id = ? AND case_id = ?`` may walk a
busy agent's whole index range, a table lookup per entry, to find the case's handful of
bundles (~90 ms at 1M bundles where one agent holds 8 % of them; 0.2 ms on the case
index once ``sqlite_stat1`` exists; ``benchmarks/bench_query.py``). PostgreSQL needs
nothing from us: autovacuum analyzes.

The same tie hides in the audit log: ``actor = ? AND action = ?`` may walk every entry
of one action (a handful of distinct values) instead of the actor's few.

The rule is in the spirit of ``PRAGMA optimize``: analyze a table (``bundles``,
``audit_log``) once it has a thousand rows and no statistics, and again whenever it has
grown tenfold since. ANALYZE then runs a handful of times in a database's life (about
1k, 10k, 100k, 1M rows) and costs about 0.5 s at 1M bundles, holding the write lock
meanwhile. It is checked when the store opens and as this process inserts rows; the
insert that crosses the mark waits for it. ``PRAGMA optimize`` itself is not used:
before SQLite 3.42 it only analyzes tables the calling connection has queried, so it
does nothing on a fresh connection. Neither refreshes the other pooled connections,
which keep the statistics they loaded when they opened; the pool is recycled after an
ANALYZE for that reason.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

from collector.storage.base import Clock, StoreBase, utc_now

__all__ = ["ANALYZE_GROWTH", "ANALYZE_MIN_ROWS", "StatsMethods"]

log = logging.getLogger("casefile.collector.storage")

ANALYZE_MIN_ROWS = 1000
ANALYZE_GROWTH = 10


ANALYZED_TABLES = ("bundles", "audit_log", "finding_rows", "bundle_metrics", "fs_metrics")


def _counts(conn: Connection, table: str) -> tuple[int, int | None]:
    """``(rows, rows when last analyzed or None)`` for ``table``.

    ``max(rowid)`` stands in for ``count(*)``: one B-tree descent instead of a scan of
    a million rows. Neither table is deleted from, so it is the row count; were it, it
    would over-count, which only analyzes early.
    """
    rows = conn.exec_driver_sql(f"SELECT max(rowid) FROM {table}").scalar() or 0
    has_stats = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'"
    ).first()
    if has_stats is None:
        return int(rows), None
    stats = conn.exec_driver_sql("SELECT stat FROM sqlite_stat1 WHERE tbl = ?", (table,)).scalars()
    # Each row's stat starts with the table's row count at the time of ANALYZE.
    analyzed = [int(str(s).split()[0]) for s in stats if s]
    return int(rows), max(analyzed) if analyzed else None


def _due_at(analyzed: int | None) -> int:
    """The row count at which a table should be analyzed (again)."""
    return ANALYZE_MIN_ROWS if not analyzed else max(ANALYZE_MIN_ROWS, ANALYZE_GROWTH * analyzed)


class StatsMethods(StoreBase):
    """Keeping SQLite's planner statistics current for the tables that list queries page through."""

    def __init__(self, engine: Engine, *, clock: Clock = utc_now) -> None:
        super().__init__(engine, clock=clock)
        self._stats_lock = threading.Lock()
        # Rows this process may insert per table before its statistics are looked at again.
        self._stats_countdown = dict.fromkeys(ANALYZED_TABLES, 0)

    def refresh_statistics(self) -> bool:
        """Run ANALYZE on each table whose SQLite statistics are missing or stale.

        Returns whether any ran; always ``False`` on PostgreSQL. A database that stays
        locked past the busy timeout is left for the next check, logged, not raised:
        statistics only steer the planner.
        """
        if self._pg:
            return False
        ran = [table for table in ANALYZED_TABLES if self._refresh(table)]
        if ran:
            # Pooled connections keep the statistics they loaded when they opened.
            self._engine.dispose()
        return bool(ran)

    def _refresh(self, table: str) -> bool:
        try:
            with self._engine.connect() as conn:
                rows, analyzed = _counts(conn, table)
            if rows < _due_at(analyzed):
                self._stats_countdown[table] = _due_at(analyzed) - rows
                return False
            with self._write() as conn:
                conn.exec_driver_sql(f"ANALYZE {table}")
        except OperationalError as exc:
            log.warning("planner statistics for %s not refreshed, trying again later: %s", table, exc.orig)
            self._stats_countdown[table] = ANALYZE_MIN_ROWS
            return False
        self._stats_countdown[table] = _due_at(rows) - rows
        log.info("planner statistics refreshed for %d rows of %s", rows, table)
        return True

    def _rows_inserted(self, table: str, n: int = 1) -> None:
        """Count ``n`` inserted rows; refresh the table's statistics when enough have arrived."""
        if self._pg:
            return
        with self._stats_lock:
            self._stats_countdown[table] -= n
            if self._stats_countdown[table] > 0:
                return
            # Only one thread checks; the others count on from the new countdown.
            self._stats_countdown[table] = ANALYZE_MIN_ROWS
        if self._refresh(table):
            self._engine.dispose()
