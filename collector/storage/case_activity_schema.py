"""The case listing's tables (migration step 13): one row per support case, kept by
``Store.insert_bundle`` in the bundle's own transaction (as ``hosts`` is), so the console's
case listing is a page of an index, whatever the number of bundles.

``last_created_at`` is the creation time of the case's newest bundle (the listing's
order: newest activity first), ``bundle_count`` how many bundles carry the case's id;
``case_hosts`` the host names of its bundles. The step fills both from the bundles
already stored. Its own ``MetaData``, like every table
added after version 1.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, Index, MetaData, String, Table, text

__all__ = ["case_activity", "case_activity_metadata", "case_hosts", "create_case_activity_tables"]

case_activity_metadata = MetaData(
    naming_convention={"ix": "ix_%(table_name)s_%(column_0_N_name)s", "pk": "pk_%(table_name)s"}
)

case_activity = Table(
    "case_activity",
    case_activity_metadata,
    Column("case_id", String(200), primary_key=True),
    Column("last_created_at", BigInteger, nullable=False),
    Column("bundle_count", BigInteger, nullable=False),
    Index(None, "last_created_at", "case_id"),
)

# The hosts of each case (as ``host_agents`` for hosts): an idempotent insert per bundle, so
# a page's hosts are read from here, not from every bundle row of its cases (50 cases of
# ~40 bundles: 2,000 table reads, ~11 ms on SQLite; here ~100 index entries).
case_hosts = Table(
    "case_hosts",
    case_activity_metadata,
    Column("case_id", String(200), primary_key=True),
    Column("hostname", String(255), primary_key=True),
)


def create_case_activity_tables(conn: Connection) -> None:
    """Migration step 13: the table, filled from the stored bundles (one pass over the
    case index)."""
    case_activity_metadata.create_all(conn)
    conn.execute(
        text(
            "INSERT INTO case_activity (case_id, last_created_at, bundle_count) "
            "SELECT case_id, MAX(created_at), COUNT(*) FROM bundles WHERE case_id IS NOT NULL GROUP BY case_id"
        )
    )
    conn.execute(
        text(
            "INSERT INTO case_hosts (case_id, hostname) "
            "SELECT DISTINCT case_id, hostname FROM bundles WHERE case_id IS NOT NULL"
        )
    )
