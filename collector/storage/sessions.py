"""Console sessions in the metadata store (``sessions_schema``): written at sign-in, read
on every console request (one primary-key lookup), deleted at sign-out, when the token is
revoked, or once expired. What a row holds is prepared by ``collector.web.sessions``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select

from collector.storage.base import StoreBase
from collector.storage.sessions_schema import console_sessions

__all__ = ["SessionMethods", "SessionRow"]


@dataclass(frozen=True)
class SessionRow:
    session_key: str
    csrf: str
    token_sealed: bytes | None
    token_id: str
    label: str
    role: str
    created_at_us: int
    expires_at_us: int


def _row(m: object) -> SessionRow:
    r = m._mapping  # type: ignore[attr-defined]
    sealed = r["token_sealed"]
    return SessionRow(
        session_key=r["session_key"],
        csrf=r["csrf"],
        token_sealed=bytes(sealed) if sealed is not None else None,
        token_id=r["token_id"],
        label=r["label"],
        role=r["role"],
        created_at_us=r["created_at"],
        expires_at_us=r["expires_at"],
    )


class SessionMethods(StoreBase):
    def put_session(self, row: SessionRow, *, replaces: str | None = None) -> None:
        """Store a new session; ``replaces``: the key of one it takes the place of (deleted
        in the same transaction: signing in never leaves the pre-session usable)."""
        t = console_sessions
        with self._write() as conn:
            if replaces:
                conn.execute(delete(t).where(t.c.session_key == replaces))
            conn.execute(
                t.insert().values(
                    session_key=row.session_key,
                    csrf=row.csrf,
                    token_sealed=row.token_sealed,
                    token_id=row.token_id,
                    label=row.label,
                    role=row.role,
                    created_at=row.created_at_us,
                    expires_at=row.expires_at_us,
                )
            )

    def get_session(self, session_key: str, now_us: int) -> SessionRow | None:
        """The session if it exists and has not expired (an expired one is left to the sweep)."""
        t = console_sessions
        with self._read() as conn:
            found = conn.execute(
                select(t).where(t.c.session_key == session_key, t.c.expires_at > now_us)
            ).first()
        return None if found is None else _row(found)

    def delete_session(self, session_key: str) -> bool:
        t = console_sessions
        with self._write() as conn:
            return bool(conn.execute(delete(t).where(t.c.session_key == session_key)).rowcount)

    def delete_sessions_of_token(self, token_id: str) -> int:
        """Ends every session of a token (revoked); how many ended."""
        if not token_id:
            return 0
        t = console_sessions
        with self._write() as conn:
            return int(conn.execute(delete(t).where(t.c.token_id == token_id)).rowcount)

    def sweep_sessions(self, now_us: int, keep_anonymous: int) -> int:
        """Deletes expired sessions, then the oldest pre-sessions beyond ``keep_anonymous``
        (a flood of sign-in forms cannot grow the table without bound); how many went."""
        t = console_sessions
        with self._write() as conn:
            gone = int(conn.execute(delete(t).where(t.c.expires_at <= now_us)).rowcount)
            anon = int(conn.execute(select(func.count()).select_from(t).where(t.c.token_id == "")).scalar_one())
            if anon > keep_anonymous:
                oldest = (
                    select(t.c.session_key)
                    .where(t.c.token_id == "")
                    .order_by(t.c.expires_at)
                    .limit(anon - keep_anonymous)
                    .scalar_subquery()
                )
                gone += int(conn.execute(delete(t).where(t.c.session_key.in_(oldest))).rowcount)
        return gone

    def count_sessions(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(console_sessions)).scalar_one())
