"""The flight recorder: real sampling of this machine, a kill, a simulated week."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.daemon.recorder import DB_NAME, Recorder, RecorderSettings, Sample, read_samples
from agent.daemon.recorder_clock import TEST_CLOCK_ENV, TEST_MODE_ENV, RealClock, VirtualClock, clock_from_env

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the recorder reads /proc (Linux)")

REPO = Path(__file__).resolve().parents[2]
BUSY = (
    "import sys, time\n"
    "open('/proc/self/comm', 'w').write('cfbusyloop')\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end: pass\n"
)

# Holds argv[1] MiB, every page written (a zeroed bytearray would stay unmapped), for argv[2] s.
MEMHOG = (
    "import sys, time\n"
    "open('/proc/self/comm', 'w').write('cfmemhog')\n"
    "block = b'\\x5a' * (int(sys.argv[1]) << 20)\n"
    "print('held', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)
MEMHOG_MIB = 512


def _start_recorder(home: Path, interval: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.daemon.recorder", "--home", str(home), "--interval", str(interval)],
        cwd=REPO,
    )


def _wait_rows(home: Path, n: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (home / DB_NAME).exists() and len(list(read_samples(home))) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} samples after {timeout} s")


def test_busy_loop_is_in_the_history_at_the_right_time(tmp_path: Path) -> None:
    rec = _start_recorder(tmp_path, 0.25)
    try:
        _wait_rows(tmp_path, 3)
        started = time.time()
        subprocess.run([sys.executable, "-c", BUSY, "2.0"], check=True)
        ended = time.time()
        time.sleep(1.5)
    finally:
        rec.terminate()
        rec.wait(10)
    samples = list(read_samples(tmp_path))
    busy = [s for s in samples if "cfbusyloop" in [n for n, _ in s.metrics.get("top_cpu", [])]]
    assert busy, "the busy loop never appeared among the top processes by CPU"
    # Seen only while it ran (a sample's rate covers the interval before it; a sample is
    # stamped when its reading of /proc ended, which a loaded machine may draw out).
    assert all(started <= s.at <= ended + 1.5 for s in busy), [(s.at - started) for s in busy]
    # A shared machine gives it what it can spare: present and busy, not a share.
    assert any(cpu > 5 for s in busy for n, cpu in s.metrics["top_cpu"] if n == "cfbusyloop")
    before = [s for s in samples if s.at < started]
    assert before and all("cfbusyloop" not in json.dumps(s.metrics) for s in before)
    # The owner only, for every file SQLite made.
    for p in tmp_path.glob(DB_NAME + "*"):
        assert p.stat().st_mode & 0o077 == 0, p


def test_a_memory_allocation_is_in_the_history_at_the_right_time(tmp_path: Path) -> None:
    rec = _start_recorder(tmp_path, 0.25)
    try:
        _wait_rows(tmp_path, 4)
        started = time.time()
        hog = subprocess.Popen([sys.executable, "-c", MEMHOG, str(MEMHOG_MIB), "2.0"], stdout=subprocess.PIPE)
        assert hog.stdout is not None
        with hog.stdout:
            assert hog.stdout.readline() == b"held\n"
        held = time.time()  # every page written: from here it is resident
        hog.wait(30)
        freed = time.time()
        time.sleep(1.5)
    finally:
        rec.terminate()
        rec.wait(10)
    samples = list(read_samples(tmp_path))

    def hog_rss(s: Sample) -> int:
        return max((int(r) for n, r in s.metrics.get("top_rss", []) if n == "cfmemhog"), default=0)

    seen = [s for s in samples if hog_rss(s)]
    assert seen, "the allocation never appeared among the top processes by RSS"
    # Seen while it lived (it writes its pages just before ``held``), never before nor after.
    assert all(started <= s.at <= freed + 1.0 for s in seen), [round(s.at - held, 2) for s in seen]
    during = [s for s in seen if held + 0.3 <= s.at <= freed - 0.3]
    assert during and all(hog_rss(s) >= MEMHOG_MIB << 20 for s in during)
    # The machine's memory in use rose by about as much (other work on a shared machine moves it a little).
    before = [s.metrics["mem.used_bytes"] for s in samples if s.at < started]
    assert before and max(s.metrics["mem.used_bytes"] for s in during) >= max(before) + (MEMHOG_MIB << 20) // 2
    after = [s for s in samples if s.at > freed + 0.5]
    assert after and all(hog_rss(s) == 0 for s in after)


def test_sigkill_leaves_the_database_intact(tmp_path: Path) -> None:
    rec = _start_recorder(tmp_path, 0.05)
    try:
        _wait_rows(tmp_path, 10)
        time.sleep(0.3)
    finally:
        os.kill(rec.pid, signal.SIGKILL)
        rec.wait(10)
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    kept = list(read_samples(tmp_path))
    assert len(kept) >= 10
    # Recording goes on where it stopped.
    r = Recorder(tmp_path, RecorderSettings(interval_s=0.05))
    r.record()
    r.close()
    assert len(list(read_samples(tmp_path))) == len(kept) + 1


class _Clock:
    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def _week(tmp_path: Path, settings: RecorderSettings) -> tuple[Recorder, _Clock]:
    (tmp_path / "probe").mkdir()
    real = Recorder(tmp_path / "probe", RecorderSettings())
    real.record()
    metrics = real.record().metrics  # one real sample, stored again and again
    real.close()
    clock = _Clock(1_700_000_000.0)
    rec = Recorder(tmp_path, settings, now=clock)
    for _ in range(int(8 * 86400 / settings.interval_s)):  # a week and a day
        rec.record(metrics)
        clock.t += settings.interval_s
    rec.prune()
    return rec, clock


def test_a_simulated_week_keeps_the_resolutions_and_the_retention(tmp_path: Path) -> None:
    settings = RecorderSettings(interval_s=20)  # 20 s, not 10: the same rules, half the rows to write
    rec, clock = _week(tmp_path, settings)
    now = clock.t
    samples = list(read_samples(tmp_path))
    assert min(s.at for s in samples) >= now - settings.retention_s
    assert min(s.at for s in samples) <= now - settings.retention_s + 60
    fine = [s.at for s in samples if s.at >= now - settings.fine_s]
    coarse = [s.at for s in samples if s.at < now - settings.fine_s - settings.interval_s]
    assert len(fine) == pytest.approx(settings.fine_s / settings.interval_s, abs=61)
    assert all(b - a == settings.interval_s for a, b in itertools.pairwise(fine))
    assert all(b - a >= 60 for a, b in itertools.pairwise(coarse))
    assert len(coarse) == pytest.approx((settings.retention_s - settings.fine_s) / 60, abs=62)
    assert rec.size_bytes() <= settings.max_bytes
    rec.close()


def test_the_size_bound_holds_after_a_simulated_week(tmp_path: Path) -> None:
    settings = RecorderSettings(interval_s=10, max_bytes=2 * 1024 * 1024)
    rec, clock = _week(tmp_path, settings)
    assert rec.size_bytes() <= settings.max_bytes
    rec.close()
    on_disk = sum(p.stat().st_size for p in tmp_path.glob(DB_NAME + "*"))
    assert on_disk <= settings.max_bytes + 1024 * 1024  # the WAL is cut to 1 MiB at most
    newest = max(s.at for s in read_samples(tmp_path))
    assert newest >= clock.t - 20  # the oldest go first, never the newest


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_agent_history_metrics_json_is_one_document(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, RecorderSettings(interval_s=0.2))
    for _ in range(3):
        rec.record()
        time.sleep(0.2)
    rec.close()
    done = _cli("agent", "history", "--metrics", "--since", "1h", "--json", "--home", str(tmp_path))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # one document: a second one would make this raise
    assert doc["sample_count"] == 3 and len(doc["samples"]) == 3
    assert doc["summary"]["mem.total_bytes"]["count"] == 3
    assert "cpu.user_pct" in doc["summary"]  # a rate, from the second sample on
    assert doc["samples"][-1]["metrics"]["top_rss"]
    console = _cli("agent", "history", "--metrics", "--home", str(tmp_path))
    assert console.returncode == 0, console.stderr
    assert "Recorded metrics" in console.stdout and "mem.total_bytes" in console.stdout


def test_agent_history_metrics_with_nothing_recorded(tmp_path: Path) -> None:
    done = _cli("agent", "history", "--metrics", "--json", "--home", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sample_count"] == 0
    assert not (tmp_path / DB_NAME).exists()  # showing never creates the database


def _recorded_home(tmp_path: Path) -> Path:
    """A home whose recorder ran 10 minutes ago and now, with a named process on top."""
    home = tmp_path / "home"
    home.mkdir()
    clock = _Clock(time.time() - 600)
    rec = Recorder(home, RecorderSettings(interval_s=10), now=clock)
    rec.record()
    clock.t += 10
    real = rec.record().metrics
    old = {**real, "cpu.user_pct": 7.5, "top_cpu": [["cfoldproc", 3.0]], "top_rss": [["cfoldproc", 1 << 20]]}
    clock.t = time.time() - 30
    rec.record({**real, "cpu.user_pct": 91.0, "top_cpu": [["cfhogproc", 95.0]], "top_rss": [["cfhogproc", 1 << 30]]})
    rec.close()
    # The sample 10 minutes back is outside a 5-minute window; the one 30 s back is in it.
    db = sqlite3.connect(home / DB_NAME)
    db.execute("UPDATE samples SET metrics = ? WHERE at < ?", (json.dumps(old), time.time() - 300))
    db.commit()
    db.close()
    return home


@pytest.mark.parametrize("profile", ["standard", "private", "facts-only"])
def test_the_bundle_carries_the_history_of_its_window(tmp_path: Path, profile: str) -> None:
    from agent.analysis import BundleView
    from agent.collect import CollectionSpec
    from agent.keys import SigningKey
    from agent.oneshot import PrivacyOptions, collect_bundle

    home = _recorded_home(tmp_path)
    spec = CollectionSpec(only=("host", "recorder"), options={"recorder_home": str(home), "recorder_since_s": 300.0})
    done = collect_bundle(
        key=SigningKey.generate(),
        output_dir=tmp_path / "out",
        spec=spec,
        privacy=PrivacyOptions(profile=profile, home=home),
    )
    hist = BundleView.from_file(done.bundle.path).snapshot.recorded_history
    assert len(hist.at_unix) == 1 and not hist.detail  # only the sample inside --since
    assert time.time() - 60 < hist.at_unix[0] < time.time()
    series = {s.metric: list(s.values) for s in hist.series}
    assert series["cpu.user_pct"] == [91.0]
    assert series["mem.total_bytes"][0] > 0
    names = [p.name for p in hist.top[0].by_cpu]
    if profile != "standard":  # facts-only pseudonymises as private does, and keeps the history
        assert names and names[0].startswith("process-") and "cfhogproc" not in names
    else:
        assert names == ["cfhogproc"]
    assert hist.top[0].by_rss[0].rss_bytes == 1 << 30


def test_a_bundle_without_a_recorder_says_so(tmp_path: Path) -> None:
    from agent.analysis import BundleView
    from agent.collect import CollectionSpec
    from agent.keys import SigningKey
    from agent.oneshot import collect_bundle

    spec = CollectionSpec(only=("host", "recorder"), options={"recorder_home": str(tmp_path)})
    done = collect_bundle(key=SigningKey.generate(), output_dir=tmp_path / "out", spec=spec)
    hist = BundleView.from_file(done.bundle.path).snapshot.recorded_history
    assert not hist.at_unix and "no flight recorder" in hist.detail


def test_the_report_draws_the_recorded_history(tmp_path: Path) -> None:
    from agent.analysis import BundleView, analyse, render_html
    from agent.collect import CollectionSpec
    from agent.keys import SigningKey
    from agent.oneshot import collect_bundle

    home = _recorded_home(tmp_path)
    spec = CollectionSpec(only=("host", "recorder"), options={"recorder_home": str(home), "recorder_since_s": 3600.0})
    done = collect_bundle(key=SigningKey.generate(), output_dir=tmp_path / "out", spec=spec)
    view = BundleView.from_file(done.bundle.path)
    assert len(view.snapshot.recorded_history.at_unix) == 3
    page = render_html(analyse(view))
    section = page[page.index('id="recorded"') :]
    assert "CPU % (recorded)" in section and "Memory and swap % (recorded)" in section
    assert section.index("<polyline") < section.index("</section>")


def test_the_test_clock_is_read_only_in_test_mode(tmp_path: Path) -> None:
    start, end = 1_780_000_000, 1_780_000_000 + 3600
    spec = f"{start}:{end}"
    assert isinstance(clock_from_env({TEST_CLOCK_ENV: spec}), RealClock)
    assert isinstance(clock_from_env({TEST_CLOCK_ENV: spec, TEST_MODE_ENV: "0"}), RealClock)
    for bad in ("1780000000", "a:b", f"{end}:{start}", "0:10", "nan:nan", "1:inf"):
        with pytest.raises(ValueError, match=TEST_CLOCK_ENV):
            clock_from_env({TEST_CLOCK_ENV: bad, TEST_MODE_ENV: "1"})
    clock = clock_from_env({TEST_CLOCK_ENV: spec, TEST_MODE_ENV: "1"})
    assert isinstance(clock, VirtualClock) and clock.now() == start
    stop = threading.Event()
    began = time.monotonic()
    for _ in range(359):
        clock.wait(stop, 10.0)  # time moves by the wait, at once
    assert clock.now() == end - 10 and time.monotonic() - began < 1
    clock.wait(stop, 60.0)  # reaches the end (not past it) at once
    assert clock.now() == end and time.monotonic() - began < 1
    waited = time.monotonic()
    clock.wait(stop, 0.2)  # from there, the real pace
    assert time.monotonic() - waited >= 0.2 and end + 0.2 <= clock.now() < end + 5
    # A real recorder process given the clock without the test flag records on the real clock.
    env = {k: v for k, v in os.environ.items() if k != TEST_MODE_ENV}
    rec = subprocess.Popen(
        [sys.executable, "-m", "agent.daemon.recorder", "--home", str(tmp_path), "--interval", "0.2"],
        cwd=REPO, env={**env, TEST_CLOCK_ENV: spec}, stderr=subprocess.PIPE,
    )
    try:
        _wait_rows(tmp_path, 3)
    finally:
        rec.terminate()
        _, err = rec.communicate(timeout=10)
    assert all(abs(s.at - time.time()) < 60 for s in read_samples(tmp_path))
    assert f"{TEST_CLOCK_ENV} ignored" in err.decode()
