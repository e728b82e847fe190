"""The table of signed collection specs (migration step 9), apart from the methods that
use it so that the migrations can create it without importing the store."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text
from sqlalchemy.engine import Connection

__all__ = ["create_spec_tables", "spec_metadata", "specs"]

spec_metadata = MetaData(naming_convention={"pk": "pk_%(table_name)s"})

specs = Table(
    "specs",
    spec_metadata,
    Column("name", String(40), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("signer", String(80), nullable=False),  # sha256:<hex> of the signing key
    Column("sha256", String(64), nullable=False),  # of the YAML text
    Column("description", Text, nullable=False),
    Column("envelope", Text, nullable=False),  # the signed file, byte for byte (ASCII JSON)
    Column("signed_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("added_at", BigInteger, nullable=False),
    Column("added_by", Text, nullable=False),
)


def create_spec_tables(conn: Connection) -> None:
    """Migration step: signed collection specs."""
    spec_metadata.create_all(conn)
