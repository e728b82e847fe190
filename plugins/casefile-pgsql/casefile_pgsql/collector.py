"""The PostgreSQL collector: server logs of the last hours, error counts, and live server stats.

Options:

* ``pg_log_dir``: the server's log directory (default: the first that exists of
  ``/var/log/postgresql``, ``$PGDATA/log``);
* ``pg_log_hours`` (default 24) and ``pg_log_max_bytes`` (default 8 MiB): the window,
  newest kept;
* ``pg_dsn``: when set and ``psql`` is installed, ``SELECT version()`` and a few
  ``pg_stat_*`` queries run (read-only, ``statement_timeout`` set) under
  ``pg_query_timeout_s`` (default 3).

Facts go to ``Snapshot.plugin_facts["pgsql"]`` (JSON text), the lines to the artifact
``logs/postgresql.jsonl`` in the bundle's log contract.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from agent.collect import CollectContext, Collector, CommandNotFound, run_command
from casefile_pgsql.pglog import SEVERITY, Recent, count_patterns, matches, read_recent

SOURCE = "postgresql"
ARTIFACT = f"logs/{SOURCE}.jsonl"
_PSQL_MAX_BYTES = 256 * 1024
# Read-only views a DBA asks for first; each row comes back as one JSON object.
QUERIES = {
    "version": "SELECT version() AS version",
    "database": (
        "SELECT datname, numbackends, xact_commit, xact_rollback, deadlocks, conflicts, temp_files, "
        "temp_bytes, blks_read, blks_hit FROM pg_stat_database WHERE datname IS NOT NULL ORDER BY datname"
    ),
    "bgwriter": "SELECT * FROM pg_stat_bgwriter",
    "activity": (
        "SELECT state, wait_event_type, count(*) AS n FROM pg_stat_activity "
        "GROUP BY state, wait_event_type ORDER BY n DESC"
    ),
    "locks_waiting": "SELECT count(*) AS n FROM pg_locks WHERE NOT granted",
}


def default_log_dirs() -> list[Path]:
    dirs = [Path("/var/log/postgresql")]
    pgdata = os.environ.get("PGDATA")
    if pgdata:
        dirs.append(Path(pgdata) / "log")
    return dirs


class PostgresCollector(Collector):
    name = "pgsql"
    description = "PostgreSQL server: recent log errors by pattern, log lines, version and pg_stat views"
    platforms = frozenset({"linux", "darwin"})
    budget_s = 5.0
    default = True

    def collect(self, ctx: CollectContext) -> None:
        facts = gather(ctx)
        publish(ctx, facts)


def gather(ctx: CollectContext) -> dict[str, Any]:
    """Everything the plugin found, as the JSON object that goes into plugin_facts."""
    hours = ctx.float_option("pg_log_hours", 24.0, minimum=0.01, maximum=24 * 365)
    max_bytes = ctx.int_option("pg_log_max_bytes", 8 << 20, minimum=1024, maximum=1 << 32)
    facts: dict[str, Any] = {"log_dir": "", "files": [], "counts": {}}
    log_dir = _log_dir(ctx)
    if log_dir is None:
        facts["log_error"] = "no PostgreSQL log directory found (set option pg_log_dir)"
    else:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
        facts["log_dir"] = str(log_dir)
        facts["since"] = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            recent = read_recent(log_dir, since, max_bytes)
        except OSError as exc:
            facts["log_error"] = f"{log_dir}: {exc.strerror or exc}"
        else:
            _summarise(facts, recent)
            _write_artifact(ctx, recent)
    dsn = ctx.str_option("pg_dsn", "")
    if dsn:
        facts["server"] = query_server(ctx, dsn)
    return facts


def _log_dir(ctx: CollectContext) -> Path | None:
    configured = ctx.str_option("pg_log_dir", "")
    candidates = [Path(configured)] if configured else default_log_dirs()
    return next((d for d in candidates if d.is_dir()), None)


def _summarise(facts: dict[str, Any], recent: Recent) -> None:
    lines = [entry for _, entry in recent.entries]
    facts["files"] = recent.files
    facts["lines"] = len(lines)
    facts["bytes_read"] = recent.bytes_read
    facts["truncated"] = recent.truncated
    facts["counts"] = dict(count_patterns(lines))
    errors = [e.ts for e in lines if e.ts is not None and e.level in ("ERROR", "FATAL", "PANIC")]
    if errors:
        facts["first_error"] = min(errors).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        facts["last_error"] = max(errors).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_artifact(ctx: CollectContext, recent: Recent) -> None:
    path = ctx.temp_path("postgresql.jsonl")
    with open(path, "wb") as out:
        for n, (file, e) in enumerate(recent.entries, 1):
            obj: dict[str, object] = {
                "ts": None if e.ts is None else e.ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "src": SOURCE,
                "sev": SEVERITY.get(e.level),
                "msg": e.msg,
                "n": n,
                "file": file,
            }
            if e.level:
                obj["level"] = e.level
            if e.pid is not None:
                obj["pid"] = e.pid
            hits = matches(e)
            if hits:
                obj["patterns"] = hits
            out.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    ctx.add_artifact_file(ARTIFACT, path, kind="log")


def query_server(ctx: CollectContext, dsn: str) -> dict[str, Any]:
    """Run QUERIES through psql; each failure is recorded, never raised."""
    timeout = ctx.float_option("pg_query_timeout_s", 3.0, minimum=0.1, maximum=60.0)
    out: dict[str, Any] = {}
    env = {"PGCONNECT_TIMEOUT": str(max(1, int(timeout))), "PGOPTIONS": f"-c statement_timeout={int(timeout * 1000)}"}
    for key, sql in QUERIES.items():
        wrapped = f"SELECT coalesce(json_agg(q), '[]'::json) FROM ({sql}) q"
        argv = ["psql", dsn, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", wrapped]
        try:
            res = run_command(argv, timeout=min(timeout, max(0.1, ctx.remaining() - 0.3)),
                              max_bytes=_PSQL_MAX_BYTES, env=env)
        except CommandNotFound as exc:
            return {"error": str(exc)}
        if not res.ok:
            out.setdefault("errors", {})[key] = res.describe_failure()
            continue
        try:
            rows = json.loads(res.text() or "[]")
        except json.JSONDecodeError:
            out.setdefault("errors", {})[key] = "psql output is not JSON"
            continue
        out[key] = rows[0]["version"] if key == "version" and rows else rows
    return out


def publish(ctx: CollectContext, facts: dict[str, Any]) -> None:
    """Hand the facts to the framework for ``Snapshot.plugin_facts[<our name>]``."""
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"))
    setter = getattr(ctx, "set_plugin_facts", None)
    if callable(setter):
        setter(text)
    else:  # agent without the hook: keep the facts in the bundle rather than lose them
        ctx.add_artifact("pgsql/facts.json", text.encode(), kind="file")
