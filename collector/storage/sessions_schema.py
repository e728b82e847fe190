"""The console's sessions table (migration step 11): one row per browser session, shared
by every collector replica on one database, so a session works on whichever replica the
load balancer picks. Its own ``MetaData``, like every table added after version 1.

``session_key`` is the SHA-256 of the id the browser's cookie holds (never the id); the
engineer's token is kept only sealed (AES-GCM) under a key derived from that id, so a
copy of this table signs nobody in and reveals no token. ``token_id`` is ``""`` for the
sign-in form's pre-session (a CSRF token, no identity).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, Index, LargeBinary, MetaData, String, Table, Text

__all__ = ["console_sessions", "create_session_tables", "sessions_metadata"]

sessions_metadata = MetaData(
    naming_convention={"ix": "ix_%(table_name)s_%(column_0_N_name)s", "pk": "pk_%(table_name)s"}
)

console_sessions = Table(
    "console_sessions",
    sessions_metadata,
    Column("session_key", String(64), primary_key=True),
    Column("csrf", String(64), nullable=False),
    Column("token_sealed", LargeBinary, nullable=True),  # nonce + AES-GCM(token); NULL before sign-in
    Column("token_id", String(32), nullable=False),
    Column("label", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index(None, "expires_at"),
    Index(None, "token_id", "expires_at"),
)


def create_session_tables(conn: Connection) -> None:
    """Migration step 11."""
    sessions_metadata.create_all(conn)
