"""Versioned schema migrations, the same steps on SQLite and PostgreSQL.

The ``schema_version`` table holds one row per applied step. Each step runs in
its own transaction together with the row that records it, so a crash leaves
the database at the previous version, never half-way. Both databases have
transactional DDL, which is what makes that true.

Several collector replicas may start at once against one PostgreSQL database:
each step takes a transaction-scoped advisory lock first, and re-reads the
version under it, so exactly one replica applies a step. On SQLite the
``BEGIN IMMEDIATE`` of a write transaction serialises the same way.

Adding a step: append ``Migration(n + 1, "what", fn)``. Version 1 builds the
tables from today's ``schema.metadata``; once a step 2 changes a table, freeze
version 1 by giving it a copy of the original table definitions, so a fresh
database still walks every step in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, func, select, text

from collector.storage.errors import SchemaError
from collector.storage.schema import metadata, schema_version, to_micros

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
    metadata.create_all(conn)


def _live_requests(conn: Connection) -> None:
    # Imported here: live.py builds on StoreBase, which imports this module.
    from collector.storage.live import create_live_tables

    create_live_tables(conn)


def _agent_channels(conn: Connection) -> None:
    from collector.storage.live import create_channel_tables

    create_channel_tables(conn)


def _hunts(conn: Connection) -> None:
    from collector.storage.hunts import create_hunt_tables

    create_hunt_tables(conn)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _initial_schema),
    Migration(2, "live snapshot requests", _live_requests),
    Migration(3, "agent channels held by collector replicas", _agent_channels),
    Migration(4, "hunts, their live requests, agent labels", _hunts),
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
