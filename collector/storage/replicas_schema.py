"""The replicas table (migration step 9): one row per collector replica sharing PostgreSQL.

Liveness is per replica, not per channel: a replica refreshes its own row's
``heartbeat_at`` every few seconds, and an agent's ``agent_channels`` row (written only
when its stream opens or closes) counts as connected while the replica it names has a
fresh heartbeat. A replica that died (SIGKILL, power loss) stops refreshing; its channel
rows then count as gone at once, everywhere, and the surviving replicas delete them and
its row lazily (``collector.storage.live.LiveMethods.reap_dead_replicas``).

Its own ``MetaData``, like every table added after version 1, so that the migration that
creates it keeps creating exactly that.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, MetaData, String, Table

__all__ = ["collector_replicas", "create_replica_tables", "replicas_metadata"]

replicas_metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

collector_replicas = Table(
    "collector_replicas",
    replicas_metadata,
    Column("replica_id", String(128), primary_key=True),
    Column("started_at", BigInteger, nullable=False),
    Column("heartbeat_at", BigInteger, nullable=False),
)


def create_replica_tables(conn: Connection) -> None:
    """Migration step 9."""
    replicas_metadata.create_all(conn)
