"""The live-request tables, a layer below ``collector.storage.live``.

Migration steps 2 and 3 create them; ``collector.storage.migrations`` imports this module
(and only SQLAlchemy below it), so the store's base, the migrations and the live methods
do not import each other in a circle.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, Index, Integer, MetaData, String, Table, Text

__all__ = [
    "agent_channels",
    "create_channel_tables",
    "create_live_tables",
    "live_metadata",
    "live_requests",
    "replica_metadata",
]

live_metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

live_requests = Table(
    "live_requests",
    live_metadata,
    Column("request_id", String(32), primary_key=True),
    Column("agent_id", String(32), nullable=False),
    Column("hostname", Text, nullable=False),
    Column("requested_by", String(32), nullable=False),  # engineer token id
    Column("requested_label", Text, nullable=False),
    Column("scopes", Text, nullable=False),  # comma-separated
    Column("since_s", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Column("bundle_id", String(32), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index(None, "agent_id", "state"),
)


def create_live_tables(conn: Connection) -> None:
    """Migration step 2."""
    live_metadata.create_all(conn)


# Its own MetaData: step 2 runs ``live_metadata.create_all`` and must keep creating
# exactly what it did, so this table belongs to step 3 alone.
replica_metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Which collector replica holds each agent's Channel stream: written when the stream opens and
# deleted when it closes. A row is live while its replica's ``collector_replicas`` row has a fresh
# heartbeat (``replicas_schema``); ``heartbeat_at`` here is only the time of the claim (it was
# refreshed every 5 s before step 9). A dead replica's rows are taken over by the next replica
# the agent reaches, and deleted lazily by the survivors.
agent_channels = Table(
    "agent_channels",
    replica_metadata,
    Column("agent_id", String(32), primary_key=True),
    Column("replica_id", String(128), nullable=False),
    Column("peer", Text, nullable=False),
    Column("connected_at", BigInteger, nullable=False),
    Column("heartbeat_at", BigInteger, nullable=False),
    Index(None, "replica_id"),
)


def create_channel_tables(conn: Connection) -> None:
    """Migration step 3."""
    replica_metadata.create_all(conn)
