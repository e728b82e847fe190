"""The PostgreSQL plugin's own analysis rule: server errors that explain an outage.

Reads what the collector stored in ``Snapshot.plugin_facts["pgsql"]`` and uses only the
agent's public analysis API (``agent.analysis``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import MappingProxyType

from agent.analysis import BundleView, Evidence, Finding, Rule

__all__ = ["PostgresServerErrors"]


class PostgresServerErrors(Rule):
    code = "pgsql-server-errors"
    title = "PostgreSQL server errors"
    description = "PANIC/FATAL messages, deadlocks or checkpoint pressure in the PostgreSQL server log."
    options = MappingProxyType({"fatal_warn": 1.0, "deadlock_warn": 1.0, "checkpoint_warn": 3.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        raw = view.snapshot.plugin_facts.get("pgsql")
        if not raw:
            return
        try:
            facts = json.loads(raw)
        except ValueError:
            return
        counts = facts.get("counts") if isinstance(facts, dict) else None
        if not isinstance(counts, dict):
            return

        def n(key: str) -> int:
            value = counts.get(key, 0)
            return value if isinstance(value, int) else 0

        if n("PANIC"):
            yield self.finding(
                "critical",
                f"PostgreSQL PANIC ({n('PANIC')}x) in the server log",
                "A PANIC stops the whole server: every session is cut and the server restarts with crash "
                "recovery. Its message names the cause (WAL write failure, corrupted page, out of disk).",
                [Evidence('plugin_facts.pgsql.counts.PANIC', n("PANIC"))],
                "Read the PANIC lines in logs/postgresql.jsonl; check disk space and I/O errors on the "
                "data and WAL volumes.",
                subject="panic",
            )
        if n("FATAL") >= self.opt("fatal_warn"):
            yield self.finding(
                "warning",
                f"PostgreSQL FATAL errors ({n('FATAL')}x)",
                "FATAL ends one session: failed authentication, too many connections, or a database that "
                "does not exist. Many of them usually mean a misconfigured client or an exhausted pool.",
                [Evidence("plugin_facts.pgsql.counts.FATAL", n("FATAL"))],
                "Group the FATAL lines by message; compare max_connections with the pool sizes of the clients.",
                subject="fatal",
            )
        if n("deadlock detected") >= self.opt("deadlock_warn"):
            yield self.finding(
                "warning",
                f"PostgreSQL deadlocks ({n('deadlock detected')}x)",
                "Transactions waited on each other and the server aborted one of them. The application saw "
                "an error and may have retried or lost work.",
                [Evidence("plugin_facts.pgsql.counts.deadlock detected", n("deadlock detected"))],
                "The DETAIL lines after each deadlock name the statements; make them lock rows in one order.",
                subject="deadlock",
            )
        if n("checkpoints are occurring too frequently") >= self.opt("checkpoint_warn"):
            yield self.finding(
                "info",
                "PostgreSQL checkpoints too frequent",
                "Checkpoints forced by WAL volume cause I/O bursts and slow queries during heavy writes.",
                [Evidence("plugin_facts.pgsql.counts.checkpoints are occurring too frequently",
                          n("checkpoints are occurring too frequently"))],
                "Raise max_wal_size so checkpoints are driven by checkpoint_timeout.",
                subject="checkpoints",
            )
