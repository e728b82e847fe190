"""A bundle's log lines as a small SQLite table, made once, so every page is one query.

Paging a 1,000,000-line bundle by scanning it costs seconds per page (every line is
decompressed and parsed again); the first time a bundle's logs are viewed its lines
are copied into ``<cache>/<bundle_id>.sqlite`` (indexed by source, severity and time),
and each page after that is a query with ``LIMIT``. The file is written under a
temporary name and renamed when complete, so a half-made index is never read; the
folder is owner-only (the lines are the bundle's, as sensitive as its blob); only the
``KEEP`` most recently used indexes are kept. A bundle never changes, so an index never
goes stale.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.analysis import LogRecord

__all__ = ["KEEP", "LogIndex"]

KEEP = 8
_BATCH = 50_000
_NO_SEV = 99
_SCHEMA = """
CREATE TABLE lines (id INTEGER PRIMARY KEY, n INTEGER, ts REAL, src TEXT NOT NULL, sev INTEGER NOT NULL,
                    sev_name TEXT NOT NULL, msg TEXT NOT NULL);
"""
_INDEXES = """
CREATE INDEX lines_src ON lines (src, id);
CREATE INDEX lines_sev ON lines (sev, id);
CREATE INDEX lines_ts ON lines (ts);
"""
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path), threading.Lock())


class LogIndex:
    """The index of one bundle's lines; :meth:`ensure` makes it if it is not there."""

    def __init__(self, cache_dir: Path, bundle_id: str) -> None:
        self.cache_dir = cache_dir
        self.path = cache_dir / f"{bundle_id}.sqlite"

    def ensure(self, records: Iterable[LogRecord], ranks: dict[str, int]) -> None:
        if self.path.exists():
            with contextlib.suppress(OSError):
                os.utime(self.path)  # most recently used
            return
        with _lock(self.path):
            if self.path.exists():
                return
            self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            partial = self.path.with_suffix(f".{os.getpid()}.partial")
            partial.unlink(missing_ok=True)
            try:
                self._build(partial, records, ranks)
                os.replace(partial, self.path)
            finally:
                partial.unlink(missing_ok=True)
            self._evict()

    @staticmethod
    def _build(path: Path, records: Iterable[LogRecord], ranks: dict[str, int]) -> None:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        db = sqlite3.connect(path)
        try:
            db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
            batch: list[tuple[Any, ...]] = []
            for rec in records:
                sev = rec.sev or ""
                batch.append((rec.n, rec.ts, rec.src, ranks.get(sev, _NO_SEV), sev, rec.msg))
                if len(batch) >= _BATCH:
                    db.executemany("INSERT INTO lines (n, ts, src, sev, sev_name, msg) VALUES (?,?,?,?,?,?)", batch)
                    batch.clear()
            if batch:
                db.executemany("INSERT INTO lines (n, ts, src, sev, sev_name, msg) VALUES (?,?,?,?,?,?)", batch)
            db.executescript(_INDEXES + "ANALYZE;")
            db.commit()
        finally:
            db.close()

    def _evict(self) -> None:
        found = sorted(self.cache_dir.glob("*.sqlite"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in found[KEEP:]:
            old.unlink(missing_ok=True)

    def page(
        self, *, source: str, max_rank: int | None, text: str, since: float | None, until: float | None,
        offset: int, limit: int,
    ) -> list[tuple[int | None, float | None, str, str, str]]:
        """Rows ``(n, ts, source, severity, message)`` in bundle order."""
        where: list[str] = []
        args: list[str | int | float] = []
        if source:
            where.append("src = ?")
            args.append(source)
        if max_rank is not None:
            where.append("sev <= ?")
            args.append(max_rank)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        if text:
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("msg LIKE ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        sql = "SELECT n, ts, src, sev_name, msg FROM lines"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ? OFFSET ?"
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return list(db.execute(sql, [*args, limit, offset]))
        finally:
            db.close()
