"""Versioned schema migrations, the same steps on SQLite and PostgreSQL.

The ``schema_version`` table holds one row per applied step. Each step runs in
its own transaction together with the row that records it, so a crash leaves
the database at the previous version, never half-way. Both databases have
transactional DDL, which is what makes that true.

Several collector replicas may start at once against one PostgreSQL database:
each step takes a transaction-scoped advisory lock first, and re-reads the
version under it, so exactly one replica applies a step. On SQLite the
``BEGIN IMMEDIATE`` of a write transaction serialises the same way.

Adding a step: append ``Migration(n + 1, "what", fn)``. A step that adds tables
gives them their own ``MetaData`` in a ``*_schema`` module (``live_schema``,
``refusals_schema``, ``findings_schema``, ``cases_schema``, ``hunts_schema``,
``replicas_schema``, ``specs_schema``, ``sessions_schema``, ``case_activity_schema``,
``doorbells_schema``), which
this module imports without importing the store; one that changes a table of
``schema.metadata`` alters it here. Version 1 is frozen in ``schema_v1`` (the original
tables), so a fresh database walks every step in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, func, select, text

from collector.storage.case_activity_schema import create_case_activity_tables
from collector.storage.cases_schema import create_case_tables
from collector.storage.counts import SKIPPED_STATES
from collector.storage.doorbells_schema import create_doorbell_tables
from collector.storage.errors import SchemaError
from collector.storage.findings_schema import create_analysis_tables
from collector.storage.hunts_schema import create_hunt_tables
from collector.storage.live_schema import create_channel_tables, create_live_tables
from collector.storage.refusals_schema import create_refusal_tables
from collector.storage.replicas_schema import create_replica_tables
from collector.storage.schema import schema_version, to_micros
from collector.storage.schema_v1 import create_v1
from collector.storage.sessions_schema import create_session_tables
from collector.storage.specs_schema import create_spec_tables

__all__ = [
    "IMMEDIATE",
    "LATEST_VERSION",
    "MIGRATIONS",
    "Migration",
    "current_version",
    "migrate",
]

# Execution option asking the SQLite begin hook for BEGIN IMMEDIATE: a write
# transaction then takes the write lock up front and waits on busy_timeout,
# instead of failing with "database is locked" when it upgrades a read lock.
IMMEDIATE = "casefile_immediate"

# An arbitrary constant shared by every replica: "casefile" in ASCII, as an int8.
_PG_LOCK_KEY = 0x63617365_66696C65 & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Migration:
    """One schema step; ``apply`` runs inside the step's transaction."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _initial_schema(conn: Connection) -> None:
    create_v1(conn)


def _bundle_origin_and_skipped(conn: Connection) -> None:
    """Bundle columns ``origin_fingerprint`` (the signer; so far always the uploader)
    and ``collectors_skipped`` (counted again from each stored manifest, and taken out
    of ``collectors_failed``, which counted them until now)."""
    conn.execute(text("ALTER TABLE bundles ADD COLUMN origin_fingerprint VARCHAR(80) NOT NULL DEFAULT ''"))
    conn.execute(text("ALTER TABLE bundles ADD COLUMN collectors_skipped INTEGER NOT NULL DEFAULT 0"))
    conn.execute(text("UPDATE bundles SET origin_fingerprint = key_fingerprint"))
    # Only manifests that can hold such a status are read, one at a time: a large
    # database's manifests are never all in memory at once.
    ids = conn.execute(
        text("SELECT bundle_id FROM bundles WHERE manifest_json LIKE '%skipped%' OR manifest_json LIKE '%unsupported%'")
    ).scalars().all()
    for bundle_id in ids:
        manifest_json = conn.execute(
            text("SELECT manifest_json FROM bundles WHERE bundle_id = :id"), {"id": bundle_id}
        ).scalar_one()
        try:
            statuses = json.loads(manifest_json).get("collectors") or []
        except (ValueError, AttributeError):
            continue
        skipped = sum(1 for s in statuses if isinstance(s, dict) and s.get("status") in SKIPPED_STATES)
        if skipped:
            conn.execute(
                text(
                    "UPDATE bundles SET collectors_skipped = :n, collectors_failed = collectors_failed - :n "
                    "WHERE bundle_id = :id"
                ),
                {"n": skipped, "id": bundle_id},
            )


def _agent_live_policy(conn: Connection) -> None:
    """Agent column ``live_policy_json``: what the agent's policy allows a live request, as
    it reported on its last channel connect (``{"allowed_scopes": [...], "max_logs_window_s":
    n}``); NULL until an agent that reports it connects."""
    conn.execute(text("ALTER TABLE agents ADD COLUMN live_policy_json TEXT"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _initial_schema),
    Migration(2, "live snapshot requests", create_live_tables),
    Migration(3, "agent channels held by collector replicas", create_channel_tables),
    Migration(4, "refused uploads per case token", create_refusal_tables),
    Migration(5, "stored analysis: findings and metrics indexed", create_analysis_tables),
    Migration(6, "case bindings: one agent key, several cases", create_case_tables),
    Migration(7, "bundle origin key and skipped collectors", _bundle_origin_and_skipped),
    Migration(8, "hunts, their live requests, agent labels", create_hunt_tables),
    Migration(9, "collector replicas: one heartbeat row each", create_replica_tables),
    Migration(10, "signed collection specs", create_spec_tables),
    Migration(11, "console sessions shared by every replica", create_session_tables),
    Migration(12, "agents: the live policy each reported on connect", _agent_live_policy),
    Migration(13, "case listing: one row per case", create_case_activity_tables),
    Migration(14, "parked agents: the replica holding each doorbell", create_doorbell_tables),
)
LATEST_VERSION = MIGRATIONS[-1].version


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})


def current_version(conn: Connection) -> int:
    """The highest applied version, 0 for an empty database."""
    if not conn.dialect.has_table(conn, schema_version.name):
        return 0
    found = conn.execute(select(func.max(schema_version.c.version))).scalar_one()
    return int(found) if found is not None else 0


def _refuse_newer(found: int, where: str) -> None:
    if found > LATEST_VERSION:
        raise SchemaError(
            f"database {where} has schema version {found}, newer than this collector knows "
            f"({LATEST_VERSION}); upgrade casefile before opening it",
            found=found,
            known=LATEST_VERSION,
        )


def migrate(engine: Engine, where: str, steps: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Bring the database up to the last of ``steps``; returns the version reached.

    Idempotent: applied steps are skipped. ``where`` names the database (without
    password) in errors.
    """
    known = steps[-1].version
    with engine.connect() as conn:
        found = current_version(conn)
        conn.rollback()
    _refuse_newer(found, where)
    if found >= known:
        return found
    with engine.connect() as conn:
        conn.execution_options(**{IMMEDIATE: True})
        with conn.begin():
            _lock(conn)
            schema_version.create(conn, checkfirst=True)
        for step in steps:
            with conn.begin():
                _lock(conn)
                # Re-read under the lock: another replica may have moved on meanwhile.
                found = current_version(conn)
                _refuse_newer(found, where)
                if found >= step.version:
                    continue
                if found != step.version - 1:
                    raise SchemaError(
                        f"database {where} is at schema version {found}; "
                        f"step {step.version} cannot follow it",
                        found=found,
                        known=known,
                    )
                step.apply(conn)
                conn.execute(
                    schema_version.insert().values(
                        version=step.version,
                        applied_at=to_micros(datetime.now(UTC)),
                        description=step.description,
                    )
                )
    return known
