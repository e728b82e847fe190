"""The casefile-pgsql plugin: found through its entry point, conformant, parses a realistic
server log, counts the vendor's error patterns, and queries a real PostgreSQL."""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from casefile_pgsql import PostgresCollector, count_patterns, parse_pg_line
from casefile_pgsql.collector import gather
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.bundle.reader import verify_bundle
from agent.collect import (
    LOG_SOURCES_KEY,
    CollectContext,
    CollectionSpec,
    declaration_problems,
    registered_collectors,
    run_collection,
)
from agent.keys import SigningKey
from agent.oneshot import collect_bundle
from protos import facts_pb2

DSN = os.environ.get("CASEFILE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def _ts(delta_min: float) -> str:
    t = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=delta_min)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d} UTC"


def write_log(directory: Path) -> Path:
    """A Debian-style server log: 30 h of history, the last hours with trouble."""
    lines = [
        f"{_ts(30 * 60)} [811] LOG:  database system is ready to accept connections",
        f'{_ts(29 * 60)} [902] app@shop ERROR:  relation "old" does not exist',  # outside 24 h
        f"{_ts(120)} [1001] LOG:  checkpoint starting: time",
        f"{_ts(119)} [1001] LOG:  checkpoints are occurring too frequently (9 seconds apart)",
        f'{_ts(119)} [1001] HINT:  Consider increasing the configuration parameter "max_wal_size".',
        f"{_ts(90)} [2002] app@shop ERROR:  deadlock detected",
        f"{_ts(90)} [2002] app@shop DETAIL:  Process 2002 waits for ShareLock on transaction 741; blocked by 2003.",
        f"{_ts(90)} [2002] app@shop STATEMENT:  UPDATE orders",
        "\t   SET state = 'paid'",  # continuation of the statement
        "\t WHERE id = 42;",
        f"{_ts(60)} [2010] app@shop FATAL:  terminating connection due to administrator command",
        f"{_ts(45)} [2011] [unknown]@[unknown] LOG:  could not receive data from client: Connection reset by peer",
        f"{_ts(30)} [2012] app@shop ERROR:  could not serialize access due to concurrent update",
        f'{_ts(5)} [2013] PANIC:  could not write to file "pg_wal/xlogtemp.2013": No space left on device',
    ]
    path = directory / "postgresql-15-main.log"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_entry_point_is_discovered_and_conformant() -> None:
    registry = registered_collectors(refresh=True)
    assert PostgresCollector in registry.collectors
    assert "pgsql" not in [b.name for b in registry.broken]
    assert declaration_problems(PostgresCollector) == []


def test_parse_line_shapes() -> None:
    e = parse_pg_line("2026-11-23 10:00:00.123 UTC [1234] postgres@db ERROR:  deadlock detected")
    assert (e.level, e.pid, e.msg) == ("ERROR", 1234, "deadlock detected")
    assert e.ts == dt.datetime(2026, 11, 23, 10, 0, 0, 123000, tzinfo=dt.UTC)
    e = parse_pg_line("2026-11-23 12:00:00 +02 [7] LOG:  checkpoint starting: time")
    assert e.ts == dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
    cont = parse_pg_line("\tWHERE id = 1")
    assert (cont.ts, cont.level) == (None, "")


@given(st.text(max_size=300))
def test_parse_line_never_crashes(text: str) -> None:
    parse_pg_line(text)


def test_log_is_read_and_patterns_counted(tmp_path: Path) -> None:
    write_log(tmp_path)
    spec = CollectionSpec(options={"pg_log_dir": str(tmp_path), "pg_log_hours": 24.0})
    ctx = CollectContext("pgsql", spec, float("inf"))
    facts = gather(ctx)
    assert facts["log_dir"] == str(tmp_path)
    assert facts["lines"] == 14 - 2  # two lines are older than 24 h
    assert facts["counts"] == {
        "FATAL": 1,
        "PANIC": 1,
        "ERROR": 2,
        "could not": 3,
        "deadlock detected": 1,
        "checkpoints are occurring too frequently": 1,
        "terminating connection due to": 1,
    }
    (artifact,) = ctx.artifacts
    assert artifact.path == "logs/postgresql.jsonl" and artifact.kind == "log"
    rows = [json.loads(line) for line in artifact.data.splitlines()]
    assert len(rows) == 12
    assert all(r["src"] == "postgresql" and r["ts"].endswith("Z") for r in rows)
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)  # oldest first
    assert rows[-1]["sev"] == "emerg" and rows[-1]["patterns"] == ["PANIC", "could not"]
    # The statement's continuation lines keep their entry's time and follow it.
    stmt = next(i for i, r in enumerate(rows) if r.get("level") == "STATEMENT")
    assert rows[stmt + 1]["msg"] == "\t   SET state = 'paid'" and rows[stmt + 1]["ts"] == rows[stmt]["ts"]


def test_byte_cap_keeps_the_newest(tmp_path: Path) -> None:
    write_log(tmp_path)
    spec = CollectionSpec(options={"pg_log_dir": str(tmp_path), "pg_log_max_bytes": 1024, "pg_log_hours": 100.0})
    facts = gather(CollectContext("pgsql", spec, float("inf")))
    assert facts["truncated"] and 0 < facts["lines"] < 14
    assert facts["counts"]["PANIC"] == 1  # the newest line survived the cap


def _gather(directory: Path, **options: Any) -> tuple[dict[str, Any], CollectContext]:
    spec = CollectionSpec(options={"pg_log_dir": str(directory), **options})
    ctx = CollectContext("pgsql", spec, float("inf"))
    return gather(ctx), ctx


def _rows(ctx: CollectContext) -> list[dict[str, Any]]:
    return [json.loads(line) for a in ctx.artifacts for line in a.data.splitlines()]


def test_window_defaults_to_the_runs_log_window(tmp_path: Path) -> None:
    # `casefile collect --since 100m` sets logs_since_s; the server log follows it.
    write_log(tmp_path)
    before = dt.datetime.now(dt.UTC)
    facts, ctx = _gather(tmp_path, logs_since_s=6000.0)
    since = dt.datetime.strptime(str(facts["since"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert abs((before - since).total_seconds() - 6000) < 5
    assert facts["lines"] == 9  # from the deadlock (90 min ago) on; the checkpoints are older
    assert facts["counts"]["checkpoints are occurring too frequently"] == 0
    assert facts["counts"]["deadlock detected"] == 1
    assert len(_rows(ctx)) == 9
    # The plugin's own option still wins when it is set.
    facts, _ = _gather(tmp_path, logs_since_s=6000.0, pg_log_hours=24.0)
    assert facts["lines"] == 12


def test_cap_follows_the_runs_log_caps(tmp_path: Path) -> None:
    write_log(tmp_path)
    whole, _ = _gather(tmp_path, pg_log_hours=100.0)
    assert not whole["truncated"] and whole["lines"] == 14
    for options, cap in (
        ({"logs_max_bytes_per_source": 1500}, 1500),  # one source's cap
        ({"logs_max_bytes": 1200}, 1200),  # never more than the total
        ({"logs_max_bytes_per_source": 1500, "pg_log_max_bytes": 1100}, 1100),  # the plugin may only lower it
        ({"logs_max_bytes_per_source": 1100, "pg_log_max_bytes": 1 << 20}, 1100),
    ):
        facts, ctx = _gather(tmp_path, pg_log_hours=100.0, **options)
        (artifact,) = ctx.artifacts
        assert facts["max_bytes"] == cap
        assert facts["truncated"] and 0 < artifact.size <= cap and facts["bytes"] == artifact.size
        rows = _rows(ctx)
        # Reading stops at the cap: lines_dropped counts what was read and cut, no more.
        assert facts["lines"] == len(rows) and 0 <= facts["lines_dropped"] <= 14 - len(rows)
        assert rows[-1]["level"] == "PANIC"  # newest kept
        (source,) = facts[LOG_SOURCES_KEY]
        assert source == {
            "name": "postgresql",
            "artifact": "logs/postgresql.jsonl",
            "lines": len(rows),
            "bytes": artifact.size,
            "truncated": True,
            "lines_dropped": facts["lines_dropped"],
            "error": "",
        }


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(min_value=0, max_value=4000))
def test_any_cap_keeps_a_newest_suffix_within_it(tmp_path_factory: pytest.TempPathFactory, cap: int) -> None:
    directory = tmp_path_factory.getbasetemp() / "pg-property"
    if not directory.exists():
        directory.mkdir()
        write_log(directory)
    full = _rows(_gather(directory, pg_log_hours=100.0)[1])
    facts, ctx = _gather(directory, pg_log_hours=100.0, logs_max_bytes_per_source=cap)
    rows = _rows(ctx)
    assert sum(a.size for a in ctx.artifacts) <= cap
    assert rows == full[len(full) - len(rows) :]  # the newest kept, oldest first (the agent's sink)
    assert facts["lines"] == len(rows) and facts["truncated"] == (len(rows) < len(full))
    (source,) = facts[LOG_SOURCES_KEY]
    assert source["artifact"] == ("logs/postgresql.jsonl" if rows else "")


def test_what_the_cap_cut_is_in_the_manifest(tmp_path: Path) -> None:
    write_log(tmp_path)
    spec = CollectionSpec(only=("pgsql",), options={"pg_log_dir": str(tmp_path), "logs_max_bytes_per_source": 1500})
    with run_collection(spec) as result:
        (entry,) = result.truncated()
        assert entry["member"] == "logs/postgresql.jsonl" and entry["source"] == "pgsql/postgresql"
    # A total cap of 0 leaves nothing to keep: no member, but still listed.
    key = SigningKey.generate()
    spec = CollectionSpec(only=("pgsql",), options={"pg_log_dir": str(tmp_path), "logs_max_bytes": 0})
    collected = collect_bundle(key=key, output_dir=tmp_path / "out", spec=spec)
    verified = verify_bundle(collected.bundle.path, expected_key=key.public)
    (entry,) = verified.manifest.truncated
    assert entry["member"] == "" and entry["source"] == "pgsql/postgresql"
    assert "logs/postgresql.jsonl" not in {m.path for m in verified.members}
    facts = json.loads(collected.result.snapshot.plugin_facts["pgsql"])
    assert facts["truncated"] and facts["lines"] == 0 and "not kept" in facts[LOG_SOURCES_KEY][0]["error"]


def test_plugin_uses_only_the_public_api() -> None:
    # Plugins import the agent only through agent.collect (collectors) and agent.analysis (rules).
    package = Path(PostgresCollector.__module__.replace(".", "/")).parent
    root = Path(__file__).parents[2] / "plugins" / "casefile-pgsql" / package
    for source in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] == "agent":
                    assert name in ("agent.collect", "agent.analysis"), f"{source.name} imports {name}"


def test_missing_log_dir_is_reported(tmp_path: Path) -> None:
    spec = CollectionSpec(options={"pg_log_dir": str(tmp_path / "none")})
    facts = gather(CollectContext("pgsql", spec, float("inf")))
    assert "no PostgreSQL log directory" in facts["log_error"]


def test_count_patterns_has_every_pattern() -> None:
    assert set(count_patterns([])) == {
        "FATAL",
        "PANIC",
        "ERROR",
        "could not",
        "deadlock detected",
        "checkpoints are occurring too frequently",
        "terminating connection due to",
    }


def test_through_the_runner(tmp_path: Path) -> None:
    write_log(tmp_path)
    spec = CollectionSpec(only=("pgsql",), options={"pg_log_dir": str(tmp_path)})
    result = run_collection(spec)
    status = {s.name: s for s in result.statuses}["pgsql"]
    assert status.state == facts_pb2.CollectorStatus.OK, status.error
    assert "logs/postgresql.jsonl" in [a.path for a in result.artifacts]
    facts = json.loads(result.snapshot.plugin_facts["pgsql"])
    assert facts["counts"]["deadlock detected"] == 1


@pytest.mark.postgres
def test_dsn_queries_a_real_server(tmp_path: Path) -> None:
    if shutil.which("psql") is None:
        pytest.skip("psql not installed (Debian package postgresql-client)")
    ready = subprocess.run(
        ["psql", DSN, "-X", "-A", "-t", "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PGCONNECT_TIMEOUT": "3"},
    )
    if ready.returncode != 0:
        if os.environ.get("CASEFILE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL not reachable with {DSN!r}: {ready.stderr.strip()}")
        pytest.skip(f"PostgreSQL not reachable with {DSN!r}: {ready.stderr.strip()}")
    spec = CollectionSpec(options={"pg_log_dir": str(tmp_path), "pg_dsn": DSN})
    facts = gather(CollectContext("pgsql", spec, float("inf")))
    server = facts["server"]
    assert "errors" not in server, server
    assert server["version"].startswith("PostgreSQL ")
    assert any(row["datname"] == "postgres" for row in server["database"])
    assert isinstance(server["locks_waiting"][0]["n"], int)
    bad = gather(
        CollectContext(
            "pgsql",
            CollectionSpec(
                options={
                    "pg_log_dir": str(tmp_path),
                    "pg_dsn": "host=127.0.0.1 port=1 user=postgres",
                    "pg_query_timeout_s": 2.0,
                }
            ),
            float("inf"),
        )
    )
    assert "version" in bad["server"]["errors"]


def test_plugin_rule_fires_on_collected_facts(tmp_path: Path) -> None:
    from agent.analysis import BundleView, registered_rules, run_rules

    assert "pgsql-server-errors" in {r.code for r in registered_rules(refresh=True).rules}
    write_log(tmp_path)
    result = run_collection(CollectionSpec(only=("pgsql",), options={"pg_log_dir": str(tmp_path)}))
    findings = run_rules(BundleView.from_snapshot(result.snapshot)).findings
    codes = {f.code for f in findings}
    assert "pgsql-server-errors" in codes
    assert any("deadlock" in f.title for f in findings if f.code == "pgsql-server-errors")
    healthy = run_rules(BundleView.from_snapshot(facts_pb2.Snapshot())).findings
    assert "pgsql-server-errors" not in {f.code for f in healthy}
