"""The flight recorder's database, read side: shared by the service and the collectors.

Kept out of ``agent.daemon`` so a collection (the one-shot CLI, the collection child)
reads the history without importing the service and its HTTP/2 stack. The writer is
``agent.daemon.recorder``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DB_NAME", "Sample", "read_samples"]

DB_NAME = "recorder.db"


@dataclass(frozen=True)
class Sample:
    at: float
    resolution_s: float
    metrics: dict[str, Any]


def read_samples(home: Path, since_unix: float = 0.0, until_unix: float | None = None) -> Iterator[Sample]:
    """The recorded samples in ``[since, until]``, oldest first; none when nothing is recorded.

    Opened read-only, so showing the history never creates or changes the database."""
    path = home / DB_NAME
    if not path.exists():
        return
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'samples'").fetchone() is None:
            return  # created a moment ago by a recorder that has not made its table yet
        rows = db.execute(
            "SELECT at, res, metrics FROM samples WHERE at >= ? AND at <= ? ORDER BY at",
            (since_unix, until_unix if until_unix is not None else float("inf")),
        ).fetchall()
        for at, res, metrics in rows:
            try:
                data = json.loads(metrics)
            except ValueError:
                continue  # a row this version cannot read is skipped, not fatal
            if isinstance(data, dict):
                yield Sample(float(at), float(res), data)
    finally:
        db.close()
