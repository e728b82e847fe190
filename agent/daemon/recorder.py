"""The flight recorder: what the machine looked like before anyone called support.

The daemon samples the machine every ``recorder_interval_s`` (10 s by default; see
``agent.daemon.recorder_sample`` for what) and keeps it in ``<home>/recorder.db``:

- every sample for the last ``recorder_fine_s`` (6 h), then one sample a minute up to
  ``recorder_retention_s`` (7 days); older rows are deleted;
- at most ``recorder_max_bytes`` (32 MiB) on disk: past it, the oldest rows go first;
- SQLite in WAL mode with ``synchronous=NORMAL``: a kill of the process or a power loss
  loses at most the last sample, never what was committed before it; the database,
  its WAL and shared-memory files are created 0600 (owner only).

A sample is one row: its time (unix seconds), its resolution (the interval it stood for)
and its metrics as JSON. The clock is injectable (``Recorder(now=...)`` for the time
alone, ``Recorder(clock=...)`` for the waits as well; ``agent.daemon.recorder_clock``) so
a week of samples can be written in a minute to check the bounds, by the class or by a
real daemon process on a test's virtual clock.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.daemon.recorder_clock import RealClock, RecorderClock, clock_from_env
from agent.daemon.recorder_sample import Sampler
from agent.daemon.recorder_settings import RecorderSettings
from agent.recorder_db import DB_NAME, Sample, read_samples

__all__ = ["DB_NAME", "Recorder", "RecorderSettings", "Sample", "read_samples"]

log = logging.getLogger("casefile.agent.daemon")

_PRUNE_EVERY = 60  # samples between prunes: pruning scans the old rows, sampling must not


def _connect(path: Path) -> sqlite3.Connection:
    # The files exist before SQLite opens them so they are never world-readable, not
    # even for a moment; SQLite gives its -wal and -shm files the database's mode.
    old = os.umask(0o077)
    try:
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if not p.exists():
                os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(p, 0o600)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    finally:
        os.umask(old)
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # before the first table: freed pages can be returned
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA journal_size_limit=1048576")
    db.execute("CREATE TABLE IF NOT EXISTS samples (at REAL NOT NULL, res REAL NOT NULL, metrics TEXT NOT NULL)")
    db.execute("CREATE INDEX IF NOT EXISTS samples_at ON samples(at)")
    db.execute("CREATE INDEX IF NOT EXISTS samples_fine ON samples(res, at)")  # the rows still to downsample
    return db


class Recorder:
    def __init__(
        self,
        home: Path,
        settings: RecorderSettings | None = None,
        *,
        now: Callable[[], float] | None = None,
        sampler: Sampler | None = None,
        clock: RecorderClock | None = None,
    ) -> None:
        self.path = home / DB_NAME
        self.settings = settings or RecorderSettings()
        self.clock = clock or RealClock()
        self.now = now or self.clock.now
        self.sampler = sampler or Sampler()
        self._db = _connect(self.path)
        self._since_prune = 0

    def close(self) -> None:
        self._db.close()

    def record(self, metrics: dict[str, Any] | None = None) -> Sample:
        """Take one sample (or store ``metrics``, for a replayed series) and keep the bounds."""
        at = self.now()
        if metrics is None:
            data = self.sampler.sample(at)
            # Stamped when the reading ended: a busy machine can take a second over /proc,
            # and what a sample saw is then never dated before it was there.
            at = self.now()
        else:
            data = metrics
        self._db.execute(
            "INSERT INTO samples VALUES (?, ?, ?)",
            (at, self.settings.interval_s, json.dumps(data, separators=(",", ":"))),
        )
        self._since_prune += 1
        if self._since_prune >= _PRUNE_EVERY:
            self.prune()
        return Sample(at, self.settings.interval_s, data)

    def prune(self) -> None:
        """Downsample past the fine window, delete past retention, then hold the size bound."""
        self._since_prune = 0
        s, now = self.settings, self.now()
        fine_cut = now - s.fine_s
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM samples WHERE at < ?", (now - s.retention_s,))
            # One sample per minute survives: the first of each minute (a real sample,
            # not an average, so a spike that was seen stays as it was).
            # Only the minutes that still hold fine rows are looked at (an index range, not
            # the week), from the start of the oldest one so a minute split across two
            # prunes keeps one sample, not two.
            (oldest_fine,) = self._db.execute("SELECT MIN(at) FROM samples WHERE res < 60").fetchone()
            lo = (oldest_fine // 60) * 60 if oldest_fine is not None else fine_cut
            self._db.execute(
                "DELETE FROM samples WHERE at >= ? AND at < ? AND res < 60 AND rowid NOT IN "
                "(SELECT MIN(rowid) FROM samples WHERE at >= ? AND at < ? GROUP BY CAST(at / 60 AS INTEGER))",
                (lo, fine_cut, lo, fine_cut),
            )
            self._db.execute("UPDATE samples SET res = 60 WHERE at < ? AND res < 60", (fine_cut,))
        self._db.execute("PRAGMA incremental_vacuum")
        while self.size_bytes() > s.max_bytes:
            count = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
            if count == 0:
                break
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(
                    "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples ORDER BY at LIMIT ?)",
                    (max(1, count // 10),),
                )
            self._db.execute("PRAGMA incremental_vacuum")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def size_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def run(self, stop: threading.Event, on_sample: Callable[[Sample], None] | None = None) -> None:
        """Sample until ``stop`` is set, on the interval's grid (no drift).

        ``on_sample`` sees each stored sample in this thread (the policy's triggers): a
        failure there is logged, never the end of the recording."""
        interval = self.settings.interval_s
        clock = self.clock
        next_at = clock.monotonic()
        while not stop.is_set():
            sample = self.record()
            if on_sample is not None:
                try:
                    on_sample(sample)
                except Exception:
                    log.exception("checking the triggers after a sample failed")
            next_at += interval
            delay = next_at - clock.monotonic()
            if delay < 0:  # the machine was suspended or starved: start again from now
                next_at, delay = clock.monotonic(), 0.0
            clock.wait(stop, delay)


def main(argv: list[str] | None = None) -> None:
    """``python -m agent.daemon.recorder --home DIR``: record without the service (a
    machine not enrolled yet, or one where the service is not wanted)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="casefile-recorder", description="Casefile flight recorder.")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=None, help="seconds between samples (default: policy)")
    args = parser.parse_args(argv)
    from agent.daemon.policy import load_policy

    policy = load_policy(args.home)
    if not policy.recorder_on and args.interval is None:
        raise SystemExit(f"casefile-recorder: the flight recorder is off in {args.home / 'policy.json'}")
    settings = policy.recorder_settings()
    if args.interval is not None:
        settings = RecorderSettings(args.interval, settings.fine_s, settings.retention_s, settings.max_bytes)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    recorder = Recorder(args.home, settings, clock=clock_from_env())
    try:
        recorder.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        recorder.close()


if __name__ == "__main__":
    main()
