"""The hunt tables and agent labels (migration step 8), apart from the methods that use
them so that the migrations can create them without importing the store."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, MetaData, String, Table, Text
from sqlalchemy.engine import Connection

__all__ = ["agent_labels", "create_hunt_tables", "hunt_metadata", "hunt_requests", "hunts"]

hunt_metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

hunts = Table(
    "hunts",
    hunt_metadata,
    Column("hunt_id", String(32), primary_key=True),
    Column("case_id", String(200), nullable=False),
    Column("created_by", String(32), nullable=False),  # engineer token id
    Column("created_label", Text, nullable=False),
    Column("selector", Text, nullable=False),  # "role=web,site=paris host=web-*", as shown
    Column("scopes", Text, nullable=False),  # comma-separated
    Column("reason", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index(None, "created_by", "created_at"),
)

hunt_requests = Table(
    "hunt_requests",
    hunt_metadata,
    Column("hunt_id", String(32), primary_key=True),
    Column("request_id", String(32), primary_key=True),
)

agent_labels = Table(
    "agent_labels",
    hunt_metadata,
    Column("agent_id", String(32), primary_key=True),
    Column("key", String(63), primary_key=True),
    Column("value", Text, nullable=False),
    Index(None, "key", "value"),
)


def create_hunt_tables(conn: Connection) -> None:
    """Migration step: hunts, their requests, agent labels."""
    hunt_metadata.create_all(conn)
