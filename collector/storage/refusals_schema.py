"""The table of refused uploads per case token (migration step 4), apart from the
methods that use it so that the migrations can create it without importing the store."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, Integer, MetaData, String, Table

__all__ = ["create_refusal_tables", "upload_refusals"]

refusal_metadata = MetaData()

upload_refusals = Table(
    "upload_refusals",
    refusal_metadata,
    Column("token_id", String(32), primary_key=True),
    Column("refused", Integer, nullable=False),
    Column("last_at", BigInteger, nullable=False),
)


def create_refusal_tables(conn: Connection) -> None:
    """Migration step 4."""
    refusal_metadata.create_all(conn)
