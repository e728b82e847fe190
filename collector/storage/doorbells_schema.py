"""The doorbells table (migration step 14): which replica holds each parked agent's doorbell.

A parked agent (``collector.doorbell``) has left its Channel stream and holds a small TLS
connection to one replica's doorbell instead. Its row here names that replica: written
when the agent parks and deleted when its doorbell closes, like ``agent_channels`` for
streams. A row counts while its replica's heartbeat is fresh (``replicas_schema``): the
agent is then online, and a request queued for it is rung by that replica. Unlike a
stream's row, the newest doorbell of an agent always wins: an agent dials again only when
its old connection died unnoticed, so the older row is stale, whichever replica wrote it.

Its own ``MetaData``, like every table added after version 1, so that the migration that
creates it keeps creating exactly that.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, Index, MetaData, String, Table, Text

__all__ = ["agent_doorbells", "create_doorbell_tables", "doorbells_metadata"]

doorbells_metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

agent_doorbells = Table(
    "agent_doorbells",
    doorbells_metadata,
    Column("agent_id", String(32), primary_key=True),
    Column("replica_id", String(128), nullable=False),
    Column("peer", Text, nullable=False),
    Column("parked_at", BigInteger, nullable=False),
    Index(None, "replica_id"),
)


def create_doorbell_tables(conn: Connection) -> None:
    """Migration step 14."""
    doorbells_metadata.create_all(conn)
