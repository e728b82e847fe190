"""Schema version 1, frozen: the tables as migration step 1 has always created them.

Step 1 once ran ``schema.metadata.create_all``; when a later step changed a table
there (step 5 added bundle columns), step 1 had to keep creating the original
shape, or a fresh database would meet step 5's ``ALTER TABLE`` on columns that
already exist. This module is that original shape; never edit it. Later shapes
live in ``schema`` and are reached by the later steps.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["create_v1"]

_v1 = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Table(
    "tokens",
    _v1,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("role", String(16), nullable=True),
    Column("case_id", String(200), nullable=True),
    Column("label", Text, nullable=False),
    Column("secret_sha256", LargeBinary(32), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Column("max_uses", Integer, nullable=True),
    Column("uses", Integer, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
)

Table(
    "agents",
    _v1,
    Column("id", String(32), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("fingerprint", String(80), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("token_id", String(32), ForeignKey("tokens.id"), nullable=True),
    Column("case_id", String(200), nullable=True),
    Column("last_seen_at", BigInteger, nullable=True),
)

_bundles = Table(
    "bundles",
    _v1,
    Column("bundle_id", String(32), primary_key=True),
    Column("agent_id", String(32), ForeignKey("agents.id"), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("case_id", String(200), nullable=True),
    Column("kind", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("key_fingerprint", String(80), nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("file_name", Text, nullable=False),
    Column("collectors_ok", Integer, nullable=False),
    Column("collectors_failed", Integer, nullable=False),
    Column("blob_key", String(64), nullable=False),
    Column("os", Text, nullable=False),
    Column("manifest_json", Text, nullable=False),
    Column("facts_pb", LargeBinary, nullable=False),
)
Index("ix_bundles_page", _bundles.c.created_at, _bundles.c.bundle_id)
Index("ix_bundles_host_page", _bundles.c.hostname, _bundles.c.created_at, _bundles.c.bundle_id)
Index("ix_bundles_case_page", _bundles.c.case_id, _bundles.c.created_at, _bundles.c.bundle_id)
Index("ix_bundles_agent_page", _bundles.c.agent_id, _bundles.c.created_at, _bundles.c.bundle_id)

Table(
    "hosts",
    _v1,
    Column("hostname", String(255), primary_key=True),
    Column("first_seen", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False),
    Column("bundle_count", BigInteger, nullable=False),
    Column("last_bundle_id", String(32), nullable=False),
    Column("os", Text, nullable=False),
)

Table(
    "host_agents",
    _v1,
    Column("hostname", String(255), ForeignKey("hosts.hostname"), primary_key=True),
    Column("agent_id", String(32), ForeignKey("agents.id"), primary_key=True),
)

_audit = Table(
    "audit_log",
    _v1,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    Column("actor", String(32), nullable=False),
    Column("actor_label", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("action", String(100), nullable=False),
    Column("target", Text, nullable=False),
    Column("peer", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False),
)
Index("ix_audit_log_actor", _audit.c.actor, _audit.c.id)
Index("ix_audit_log_action", _audit.c.action, _audit.c.id)


def create_v1(conn: Connection) -> None:
    """Migration step 1."""
    _v1.create_all(conn)
