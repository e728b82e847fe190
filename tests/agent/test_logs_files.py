"""Text logs read backwards on real files: windows, rotations (.1, .gz), caps, multi-line."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import time
from pathlib import Path

from agent.bundle.reader import verify_bundle
from agent.collect import CollectionSpec, run_collection
from agent.collect.builtin.logs import LogsCollector
from agent.collect.logparse import NewestFirstSink, read_text_log
from agent.keys import SigningKey
from agent.oneshot import collect_bundle
from protos import facts_pb2

T = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
STEP_S = 3  # one line every 3 s: 10 h of log is 12,000 lines, ~1 MB


def _lines(start: dt.datetime, end: dt.datetime) -> list[str]:
    out, ts, n = [], start, 0
    while ts < end:
        sev = "ERROR" if n % 50 == 0 else "INFO"
        out.append(f"{ts.strftime('%Y-%m-%dT%H:%M:%S')}Z app[7]: {sev} request {n} done in {n % 97} ms")
        ts += dt.timedelta(seconds=STEP_S)
        n += 1
    return out


def _write(path: Path, lines: list[str], mtime: dt.datetime, *, gz: bool = False) -> None:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    os.utime(path, (mtime.timestamp(), mtime.timestamp()))


def _rotated_set(tmp: Path) -> tuple[Path, list[str]]:
    """app.log (last 10 h), .1 (10 h before), .2.gz (10 h before that), .3.gz corrupt."""
    log = tmp / "app.log"
    newest = _lines(T - dt.timedelta(hours=10), T)
    one = _lines(T - dt.timedelta(hours=20), T - dt.timedelta(hours=10))
    two = _lines(T - dt.timedelta(hours=30), T - dt.timedelta(hours=20))
    _write(log, newest, T)
    _write(tmp / "app.log.1", one, T - dt.timedelta(hours=10))
    _write(tmp / "app.log.2.gz", two, T - dt.timedelta(hours=20), gz=True)
    # Older than any window used here: opening it would record a gzip error.
    (tmp / "app.log.3.gz").write_bytes(b"not gzip at all")
    old = (T - dt.timedelta(hours=30)).timestamp()
    os.utime(tmp / "app.log.3.gz", (old, old))
    return log, two + one + newest


def _read(tmp: Path, log: Path, since: dt.datetime, cap: int, deadline: float | None = None):  # type: ignore[no-untyped-def]
    sink = NewestFirstSink("app", tmp / "spool", cap)
    outcome = read_text_log(log, sink, since=since, deadline=deadline or time.monotonic() + 60, temp_dir=tmp)
    dest = tmp / "out.jsonl"
    sink.finish(dest)
    rows = [json.loads(x) for x in dest.read_text().splitlines()]
    return sink, outcome, rows


def test_window_reaches_into_rotations_and_stops_there(tmp_path: Path) -> None:
    log, everything = _rotated_set(tmp_path)
    since = T - dt.timedelta(hours=24)
    sink, outcome, rows = _read(tmp_path, log, since, 64 << 20)
    assert outcome.errors == [] and not outcome.timed_out
    assert [Path(f).name for f in outcome.files] == ["app.log", "app.log.1", "app.log.2.gz"]
    expected = [line for line in everything if line[:19] >= since.strftime("%Y-%m-%dT%H:%M:%S")]
    assert len(rows) == len(expected) == sink.lines
    assert [r["msg"] for r in rows] == [line.split("Z ", 1)[1] for line in expected]
    stamps = [r["ts"] for r in rows]
    assert stamps == sorted(stamps) and stamps[0] >= "2026-11-22T12:00:00"
    assert all(r["src"] == "app" for r in rows)
    assert rows[-1]["ts"] == "2026-11-23T11:59:57.000000Z"
    assert {r["sev"] for r in rows} == {"err", None}  # guessed from "ERROR", else unknown
    assert sink.severity_counts["err"] == sum(1 for r in rows if r["sev"] == "err")
    assert not sink.truncated and sink.lines_dropped == 0
    assert rows[0].get("file") == "app.log.2.gz" and "file" not in rows[-1]


def test_a_short_window_reads_only_the_live_file(tmp_path: Path) -> None:
    log, _ = _rotated_set(tmp_path)
    _sink, outcome, rows = _read(tmp_path, log, T - dt.timedelta(hours=2), 64 << 20)
    assert [Path(f).name for f in outcome.files] == ["app.log"]
    assert len(rows) == 2 * 3600 // STEP_S
    # Byte offsets point at the lines in the file.
    raw = log.read_bytes()
    last = rows[-1]
    assert raw[last["off"] :].startswith(b"2026-11-23T11:59:57Z")


def test_cap_keeps_the_newest_lines_and_counts_what_it_drops(tmp_path: Path) -> None:
    log, everything = _rotated_set(tmp_path)
    since = T - dt.timedelta(hours=24)
    sink, _outcome, rows = _read(tmp_path, log, since, 100_000)
    in_window = sum(1 for line in everything if line[:19] >= since.strftime("%Y-%m-%dT%H:%M:%S"))
    assert sink.truncated and 0 < sink.bytes <= 100_000
    assert rows[-1]["ts"] == "2026-11-23T11:59:57.000000Z"  # the newest line is kept
    assert len(rows) == sink.lines < in_window
    # Dropped lines are counted to the window's start (timestamp checked every 64 lines).
    assert in_window - sink.lines <= sink.lines_dropped <= in_window - sink.lines + 64


def test_multi_line_records_and_headless_lines(tmp_path: Path) -> None:
    log = tmp_path / "java.log"
    log.write_text(
        "continued from an older file\n"
        "2026-11-23T11:00:00Z ERROR request failed\n"
        "java.lang.IllegalStateException: boom\n"
        "\tat com.example.A.run(A.java:10)\n"
        "2026-11-23T11:00:05Z INFO recovered\n"
    )
    sink, _o, rows = _read(tmp_path, log, T - dt.timedelta(hours=1), 1 << 20)
    assert [(r["ts"], r["msg"]) for r in rows] == [
        (None, "continued from an older file"),
        (
            "2026-11-23T11:00:00.000000Z",
            "ERROR request failed\njava.lang.IllegalStateException: boom\n\tat com.example.A.run(A.java:10)",
        ),
        ("2026-11-23T11:00:05.000000Z", "INFO recovered"),
    ]
    assert sink.lines == 3


def test_bsd_syslog_year_comes_from_the_file_mtime(tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_text("Dec 31 23:59:58 h cron[1]: old year\nJan  1 00:00:02 h kernel: warning: new year\n")
    mtime = dt.datetime(2027, 1, 1, 0, 0, 5).astimezone()
    os.utime(log, (mtime.timestamp(), mtime.timestamp()))
    _sink, _o, rows = _read(tmp_path, log, mtime - dt.timedelta(days=1), 1 << 20)
    years = [r["ts"][:4] for r in rows]
    assert years[0] in ("2026", "2027") and rows[-1]["sev"] == "warning"
    local = [dt.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).astimezone() for r in rows]
    assert [x.year for x in local] == [2026, 2027]


def test_a_spent_deadline_stops_reading(tmp_path: Path) -> None:
    log, _ = _rotated_set(tmp_path)
    sink, outcome, _rows = _read(tmp_path, log, T - dt.timedelta(hours=24), 64 << 20, deadline=1.0)
    assert outcome.timed_out and sink.lines < 256


def _now_log(path: Path, hours: float, every_s: int = 10) -> int:
    now = dt.datetime.now(dt.UTC)
    lines = _lines(now - dt.timedelta(hours=hours), now)[:: max(1, every_s // STEP_S)]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def test_logs_collector_end_to_end(tmp_path: Path) -> None:
    app = tmp_path / "app.log"
    other = tmp_path / "other.log"
    n_app = _now_log(app, 2)
    _now_log(other, 2)
    spec = CollectionSpec(
        only=("logs",),
        options={
            "log_files": f"{app}, {other}",
            "logs_since_s": 3600.0,
            "logs_max_bytes_per_source": 20_000,
            "logs_max_bytes": 30_000 + 1_000_000,
        },
    )
    with run_collection(spec, collectors=[LogsCollector]) as result:
        (status,) = result.statuses
        assert status.state == facts_pb2.CollectorStatus.OK, status.error
        logs = result.snapshot.logs
        by = {s.name: s for s in logs.sources}
        assert logs.max_bytes_per_source == 20_000
        journal = by["journal"]
        assert journal.error or journal.lines > 0  # no journal in a container: a reason
        app_src = by["file-app"]
        assert app_src.artifact == "logs/file-app.jsonl" and app_src.truncated
        assert 0 < app_src.lines < n_app and app_src.bytes <= 20_000
        assert app_src.origin == str(app) and app_src.last_ts.seconds > 0
        assert app_src.severity_counts["err"] > 0
        assert by["file-other"].lines > 0
        arts = {a.path: a for a in result.artifacts}
        art = arts["logs/file-app.jsonl"]
        assert art.kind == "log" and art.collector == "logs" and art.size == app_src.bytes
        with art.open() as fh:
            rows = [json.loads(line) for line in fh]
        assert len(rows) == app_src.lines and all(r["src"] == "file-app" for r in rows)
        stamps = [r["ts"] for r in rows]
        assert stamps == sorted(stamps)
        assert result.truncated()[0]["member"] in arts
        temp_files = [Path(a.source) for a in result.artifacts if a.source is not None]
        assert temp_files and all(p.exists() for p in temp_files)
    assert not any(p.exists() for p in temp_files)  # close() removed the run's temp files


def test_total_cap_leaves_later_sources_facts_only(tmp_path: Path) -> None:
    app = tmp_path / "app.log"
    _now_log(app, 1)
    spec = CollectionSpec(
        only=("logs",),
        options={"log_files": str(app), "logs_max_bytes": 0, "logs_since_s": 7200.0},
    )
    with run_collection(spec, collectors=[LogsCollector]) as result:
        src = {s.name: s for s in result.snapshot.logs.sources}["file-app"]
        assert src.lines == 0 and src.truncated and src.lines_dropped > 0
        assert src.artifact == "" and "total byte cap" in src.error
        assert "logs/file-app.jsonl" not in {a.path for a in result.artifacts}
        cut = [t for t in result.truncated() if t["source"] == "file-app"]
        assert cut == [
            {
                "member": "",
                "source": "file-app",
                "lines_dropped": src.lines_dropped,
                "reason": "byte cap or time budget; no lines kept, so no member",
            }
        ]


def test_sources_cut_to_nothing_are_in_the_signed_manifest(tmp_path: Path) -> None:
    app, other = tmp_path / "app.log", tmp_path / "other.log"
    _now_log(app, 1)
    _now_log(other, 1)
    spec = CollectionSpec(
        only=("logs",),
        options={"log_files": f"{app},{other}", "logs_since_s": 7200.0, "logs_max_bytes": 0},
    )
    key = SigningKey.generate()
    collected = collect_bundle(key=key, output_dir=tmp_path / "out", spec=spec)
    verified = verify_bundle(collected.bundle.path, expected_key=key.public)
    by_source = {t["source"]: t for t in verified.manifest.truncated}
    for name in ("file-app", "file-other"):
        assert by_source[name]["member"] == "" and by_source[name]["lines_dropped"] > 0
    assert not any(m.path.startswith("logs/file-") for m in verified.members)


def test_missing_log_file_is_a_reason_not_a_failure(tmp_path: Path) -> None:
    spec = CollectionSpec(only=("logs",), options={"log_files": str(tmp_path / "nope.log")})
    with run_collection(spec, collectors=[LogsCollector]) as result:
        assert result.statuses[0].state == facts_pb2.CollectorStatus.OK
        src = {s.name: s for s in result.snapshot.logs.sources}["file-nope"]
        assert "does not exist" in src.error
