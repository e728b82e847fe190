"""The PostgreSQL collector: server logs of the last hours, error counts, and live server stats.

Options (declared in ``PostgresCollector.options``; the README's table is made from them):

* ``pg_log_dir``: the server's log directory (default: the first that exists of
  ``/var/log/postgresql``, ``$PGDATA/log``);
* ``pg_log_hours`` and ``pg_log_max_bytes``: the window and the byte cap, newest kept.
  Unset (0), they are the run's own log bounds (``log_bounds``): the window of
  ``logs_since_s`` (``casefile collect --since 2h``, default 24 h) and the cap of one
  log source, ``logs_max_bytes_per_source`` (default 8 MiB) but never more than
  ``logs_max_bytes``. ``pg_log_max_bytes`` can only lower that cap, so the server log
  never escapes the bounds the run was given;
* ``pg_dsn``: when set and ``psql`` is installed, ``SELECT version()`` and a few
  ``pg_stat_*`` queries run (read-only, ``statement_timeout`` set) under
  ``pg_query_timeout_s`` (default 3).

Facts go to ``Snapshot.plugin_facts["pgsql"]`` (JSON text), the lines to the artifact
``logs/postgresql.jsonl`` in the bundle's log contract, written by the agent's
``NewestFirstSink`` from ``LogRecord`` rows (the plugin API of ``agent.collect``). The cap counts the artifact's
bytes; what it cut is in the facts (``truncated``, ``lines_dropped``) and, through
``log_sources``, in the manifest's ``truncated`` list, also when nothing was kept.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.collect import (
    LOG_OPTIONS,
    LOG_SOURCES_KEY,
    CollectContext,
    Collector,
    CommandNotFound,
    FloatOption,
    IntOption,
    LogRecord,
    NewestFirstSink,
    StrOption,
    log_bounds,
    log_source_entry,
    run_command,
)
from casefile_pgsql.pglog import SEVERITY, PgLogLine, Recent, count_patterns, matches, read_recent

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


LOG_DIR = StrOption(
    "pg_log_dir", "", "the server's log directory", shown_default="first of `/var/log/postgresql`, `$PGDATA/log`"
)
LOG_HOURS = FloatOption(
    "pg_log_hours",
    0.0,
    "how far back the server log is read, hours; 0: the run's window",
    shown_default="0 (the run's window: `--since`, `logs_since_s`; 24 h)",
    maximum=24 * 366,
)
LOG_MAX_BYTES = IntOption(
    "pg_log_max_bytes",
    0,
    "bytes of the server log kept, newest first; can only lower the run's cap; 0: that cap",
    shown_default="0 (the run's per-source cap, `logs_max_bytes_per_source`, 8 MiB, never more than `logs_max_bytes`)",
    maximum=1 << 34,
)
DSN = StrOption("pg_dsn", "", "when set and `psql` is installed, the queries run with it", shown_default="unset")
QUERY_TIMEOUT = FloatOption(
    "pg_query_timeout_s", 3.0, "per query, seconds (`statement_timeout` too)", minimum=0.1, maximum=60.0
)


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
    options = (LOG_DIR, LOG_HOURS, LOG_MAX_BYTES, DSN, QUERY_TIMEOUT, *LOG_OPTIONS)

    def collect(self, ctx: CollectContext) -> None:
        facts = gather(ctx)
        publish(ctx, facts)


def log_window(ctx: CollectContext) -> tuple[float, int]:
    """Seconds back and the byte cap for the server log: the plugin's options, else the run's."""
    bounds = log_bounds(ctx)
    hours, most = ctx.get(LOG_HOURS), ctx.get(LOG_MAX_BYTES)
    window_s = hours * 3600 if hours > 0 else bounds.since_s
    cap = min(bounds.source_cap, most) if most > 0 else bounds.source_cap
    return window_s, cap


def gather(ctx: CollectContext) -> dict[str, Any]:
    """Everything the plugin found, as the JSON object that goes into plugin_facts."""
    window_s, max_bytes = log_window(ctx)
    facts: dict[str, Any] = {"log_dir": "", "files": [], "counts": {}}
    log_dir = _log_dir(ctx)
    if log_dir is None:
        facts["log_error"] = "no PostgreSQL log directory found (set option pg_log_dir)"
    else:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=window_s)
        facts["log_dir"] = str(log_dir)
        facts["since"] = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        facts["max_bytes"] = max_bytes
        try:
            # A line's JSON row is longer than the line, so max_bytes of lines fill the cap.
            recent = read_recent(log_dir, since, max_bytes)
        except OSError as exc:
            facts["log_error"] = f"{log_dir}: {exc.strerror or exc}"
        else:
            kept = _write_artifact(ctx, recent, max_bytes)
            _summarise(facts, recent, kept)
    dsn = ctx.get(DSN)
    if dsn:
        facts["server"] = query_server(ctx, dsn)
    return facts


def _log_dir(ctx: CollectContext) -> Path | None:
    configured = ctx.get(LOG_DIR)
    candidates = [Path(configured)] if configured else default_log_dirs()
    return next((d for d in candidates if d.is_dir()), None)


@dataclass(frozen=True)
class Kept:
    """What went into the artifact: the newest lines under the cap."""

    entries: list[PgLogLine]  # oldest first
    bytes: int
    dropped: int  # lines read and then cut; reading itself stops at the cap, older lines are not counted
    artifact: str  # "" when nothing was kept


def _summarise(facts: dict[str, Any], recent: Recent, kept: Kept) -> None:
    lines = kept.entries
    truncated = recent.truncated or kept.dropped > 0
    facts["files"] = recent.files
    facts["lines"] = len(lines)
    facts["bytes_read"] = recent.bytes_read
    facts["bytes"] = kept.bytes
    facts["truncated"] = truncated
    facts["lines_dropped"] = kept.dropped
    facts["counts"] = dict(count_patterns(lines))  # of the lines kept: the facts match the artifact
    errors = [e.ts for e in lines if e.ts is not None and e.level in ("ERROR", "FATAL", "PANIC")]
    if errors:
        facts["first_error"] = min(errors).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        facts["last_error"] = max(errors).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    error = "" if lines or not truncated else "not kept: the log byte cap is smaller than the newest line"
    facts[LOG_SOURCES_KEY] = [
        log_source_entry(
            SOURCE,
            artifact=kept.artifact,
            lines=len(lines),
            bytes_kept=kept.bytes,
            truncated=truncated,
            lines_dropped=kept.dropped,
            error=error,
        )
    ]


def _record(file: str, e: PgLogLine) -> LogRecord:
    """One server log line in the bundle's log contract (``agent.collect.LogRecord``)."""
    extra: dict[str, str | int | list[str]] = {"file": file}
    if e.level:
        extra["level"] = e.level
    if e.pid is not None:
        extra["pid"] = e.pid
    hits = matches(e)
    if hits:
        extra["patterns"] = hits
    return LogRecord(ts=e.ts, sev=SEVERITY.get(e.level), msg=e.msg, extra=extra)


def _write_artifact(ctx: CollectContext, recent: Recent, max_bytes: int) -> Kept:
    """The newest rows that fit ``max_bytes``, through the agent's newest-first sink (it
    writes them oldest first); none kept: no artifact."""
    sink = NewestFirstSink(SOURCE, ctx.temp_path("postgresql.spool"), max_bytes)
    newest_first = recent.entries[::-1]
    for i, (file, entry) in enumerate(newest_first):
        if not sink.add(_record(file, entry)):
            sink.dropped(len(newest_first) - i - 1)  # the older ones, not built into records
            break
    if not sink.lines:
        sink.discard()
        return Kept([], 0, sink.lines_dropped, "")
    path = ctx.temp_path("postgresql.jsonl")
    sink.finish(path)
    ctx.add_artifact_file(ARTIFACT, path, kind="log")
    kept = [e for _, e in recent.entries[len(recent.entries) - sink.lines :]]
    return Kept(kept, sink.bytes, sink.lines_dropped, ARTIFACT)


def query_server(ctx: CollectContext, dsn: str) -> dict[str, Any]:
    """Run QUERIES through psql; each failure is recorded, never raised."""
    timeout = ctx.get(QUERY_TIMEOUT)
    out: dict[str, Any] = {}
    env = {"PGCONNECT_TIMEOUT": str(max(1, int(timeout))), "PGOPTIONS": f"-c statement_timeout={int(timeout * 1000)}"}
    for key, sql in QUERIES.items():
        wrapped = f"SELECT coalesce(json_agg(q), '[]'::json) FROM ({sql}) q"
        argv = ["psql", dsn, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", wrapped]
        try:
            res = run_command(
                argv, timeout=min(timeout, max(0.1, ctx.remaining() - 0.3)), max_bytes=_PSQL_MAX_BYTES, env=env
            )
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
