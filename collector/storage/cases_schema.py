"""The case-binding table (migration step 6), apart from the methods that use it so that
the migrations can create it without importing the store (no import circle)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, MetaData, String, Table, select

from collector.storage.schema import agents

__all__ = ["agent_cases", "create_case_tables"]

case_metadata = MetaData(naming_convention={"pk": "pk_%(table_name)s", "ix": "ix_%(table_name)s_%(column_0_N_name)s"})

agent_cases = Table(
    "agent_cases",
    case_metadata,
    Column("agent_id", String(32), primary_key=True),
    Column("case_id", String(200), primary_key=True),
    Column("token_id", String(32), nullable=False),  # the case token that first bound it
    Column("bound_at", BigInteger, nullable=False),
)


def create_case_tables(conn: Connection) -> None:
    """Migration step 6: the table, and a binding for every case-made identity so far."""
    case_metadata.create_all(conn)
    rows = conn.execute(
        select(agents.c.id, agents.c.case_id, agents.c.token_id, agents.c.created_at).where(
            agents.c.case_id.is_not(None)
        )
    )
    values = [
        {"agent_id": r.id, "case_id": r.case_id, "token_id": r.token_id or "", "bound_at": r.created_at} for r in rows
    ]
    if values:
        conn.execute(agent_cases.insert(), values)
