"""A simulated week of recording by a real ``casefile-agent`` process on a test clock.

The daemon runs on the virtual clock of ``agent.daemon.recorder_clock``
(``CASEFILE_TEST_MODE=1``, ``CASEFILE_TEST_CLOCK=start:end``): time moves only when the
recorder waits, so eight days of real samples of this machine are taken back to back, then
the clock runs at the real pace and the daemon goes quiet. What the daemon left on disk is
then read as the customer's machine would hold it: within its bound, every sample for the
last ``recorder_fine_s``, one a minute before, nothing older than ``recorder_retention_s``.

30 s between samples instead of 10: the same rules with a third of the samples to take
(23,000 /proc readings for eight days rather than 69,000); the small bound's run takes one
a minute. Each run takes one to a few minutes, depending on the machine's load.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from agent.daemon.recorder_clock import TEST_CLOCK_ENV, TEST_MODE_ENV
from agent.recorder_db import DB_NAME, read_samples
from tests.e2e.test_live import BIN, HOSTNAME, Collector, enroll_agent, free_port, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the recorder reads /proc (Linux)"),
]

START = 1_780_000_000.0  # 2026-05-28: far from today, so no sample can be mistaken for a real one
DAYS = 8  # a week and a day: the oldest day must be gone
INTERVAL = 30
FINE = 6 * 3600
RETENTION = 7 * 86400
WAL_MAX = 1024 * 1024  # journal_size_limit: the WAL is cut back to this at each checkpoint


def _run_week(tmp_path: Path, max_bytes: int, interval: int = INTERVAL) -> tuple[Path, float]:
    """Enroll a real agent, run ``casefile-agent`` through DAYS simulated days, stop it."""
    c = Collector(data=tmp_path / "data", port=free_port(), log=tmp_path / "collector.log")
    c.start()
    try:
        agent = enroll_agent(c, tmp_path / "home", HOSTNAME)
    finally:
        c.stop()  # the recorder needs no collector: the agent keeps dialling, backing off
    policy = {
        "allowed_scopes": ["facts"],
        "recorder_interval_s": interval,
        "recorder_fine_s": FINE,
        "recorder_retention_s": RETENTION,
        "recorder_max_bytes": max_bytes,
    }
    (agent.home / "policy.json").write_text(json.dumps(policy))
    end = START + DAYS * 86400
    env = {
        **os.environ,
        TEST_MODE_ENV: "1",
        TEST_CLOCK_ENV: f"{START:.0f}:{end:.0f}",
        "CASEFILE_AGENT_BACKOFF_MAX": "5",
    }
    with agent.log.open("a") as fh:
        proc = subprocess.Popen(
            [str(BIN / "casefile-agent"), "--home", str(agent.home)], stdout=fh, stderr=subprocess.STDOUT, env=env
        )
    try:

        def newest() -> float:
            if not (agent.home / DB_NAME).exists():
                return 0.0
            db = sqlite3.connect(f"file:{agent.home / DB_NAME}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT MAX(at) FROM samples").fetchone()
            except sqlite3.OperationalError:  # the table is not made yet
                return 0.0
            finally:
                db.close()
            return float(row[0] or 0.0)

        # The clock reaches ``end`` after DAYS * 86400 / INTERVAL samples and then runs at
        # the real pace (the next sample is 30 real seconds away): the test stops the daemon
        # once the simulated days are written. The recorder prunes every 60 samples, so
        # the last prune ran at most 60 samples (30 simulated minutes) before the end.
        wait_for("eight simulated days recorded", lambda: newest() >= end - interval, timeout=900,
                 logs=agent.log.read_text)
        assert proc.poll() is None, agent.log.read_text()
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0, agent.log.read_text()
    log = agent.log.read_text()
    assert "virtual test clock" in log
    return agent.home, end


def _on_disk(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob(DB_NAME + "*"))


def test_a_simulated_week_through_the_daemon_keeps_its_resolutions(tmp_path: Path) -> None:
    home, end = _run_week(tmp_path, 32 * 1024 * 1024)
    samples = list(read_samples(home))
    times = [s.at for s in samples]
    newest = times[-1]
    assert newest >= end - INTERVAL
    # The retention: nothing older than 7 days before the last prune (at most 60 samples before the end).
    last_prune = newest - 60 * INTERVAL
    assert times[0] >= last_prune - RETENTION
    assert times[0] <= newest - RETENTION + 60  # a week is kept, not less
    # Every sample in the last 6 h (real samples, exactly one interval apart on the test clock).
    fine = [t for t in times if t >= newest - FINE + 60 * INTERVAL]
    assert all(b - a == INTERVAL for a, b in itertools.pairwise(fine)), "a fine sample is missing"
    assert len(fine) >= (FINE - 60 * INTERVAL) / INTERVAL
    # One a minute before the fine window, for the rest of the week.
    coarse = [s for s in samples if s.at < last_prune - FINE]
    assert all(b.at - a.at >= 60 for a, b in itertools.pairwise(coarse))
    assert all(s.resolution_s == 60 for s in coarse)
    assert len(coarse) >= (RETENTION - FINE - 60 * INTERVAL) / 60 - 2
    # Real samples of this machine, not stand-ins. (A CPU % needs the kernel's tick counters
    # to move between two samples; taken back to back, many pairs fall within one tick, the
    # more so the faster the machine: 22 % of samples had one on a fast VM, where a quarter
    # was asked before. One in twenty still tells real readings from stand-ins.)
    assert all("mem.used_bytes" in s.metrics and "load.1m" in s.metrics for s in samples)
    assert sum("cpu.user_pct" in s.metrics for s in samples) >= len(samples) // 20
    # The bound, and the database whole and owner-only.
    assert _on_disk(home) <= 32 * 1024 * 1024 + WAL_MAX
    db = sqlite3.connect(home / DB_NAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    for p in home.glob(DB_NAME + "*"):
        assert p.stat().st_mode & 0o077 == 0, p


def test_a_simulated_week_through_the_daemon_stays_in_a_small_bound(tmp_path: Path) -> None:
    # A sample a minute (half the samples to take): the bound, not the resolutions, is tested here.
    interval = 60
    bound = 2 * 1024 * 1024  # a week of this machine's samples takes several times this
    home, end = _run_week(tmp_path, bound, interval)
    db = sqlite3.connect(home / DB_NAME)
    pages, free, size = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    assert (pages - free) * size <= bound
    assert _on_disk(home) <= bound + WAL_MAX
    samples = list(read_samples(home))
    # The oldest went first, never the newest: the last 6 h are all there.
    assert samples[-1].at >= end - interval
    fine = [s.at for s in samples if s.at >= samples[-1].at - FINE]
    assert all(b - a == interval for a, b in itertools.pairwise(fine)) and len(fine) >= FINE / interval
    assert samples[0].at > end - RETENTION  # the bound, not the retention, cut this history
