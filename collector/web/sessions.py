"""Console sessions: a server-side table keyed by the hash of a random id.

The browser holds only the session id, in a ``__Host-`` cookie (HttpOnly, Secure,
SameSite=Strict, Path=/, a Max-Age); the table, in this process's memory, holds the
engineer's token so every page runs the API's own checks with it (a revoked token
ends the session at its next request), and the session's CSRF token. Only the SHA-256
of an id is a key: a dump of the table names no usable cookie. Signing in always makes a
new id (no fixation); signing out deletes the row. A collector restart signs everyone
out; each replica has its own table (sessions do not move between replicas).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COOKIE", "SESSION_TTL_S", "Session", "SessionTable", "cookie_header", "expired_cookie_header"]

COOKIE = "__Host-casefile_session"
SESSION_TTL_S = 8 * 3600  # a working day; the token's own expiry ends it earlier
ANON_TTL_S = 15 * 60  # the sign-in form's pre-session (its CSRF token only)
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    """One browser's session; ``token`` is None before sign-in (the sign-in form's)."""

    key: str  # sha256 of the id the cookie holds
    csrf: str
    expires_at: float
    token: str | None = None
    token_id: str = ""
    label: str = ""
    role: str = ""

    @property
    def signed_in(self) -> bool:
        return self.token is not None

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf.encode(), (presented or "").encode())


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


class SessionTable:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._rows: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def _sweep(self, now: float) -> None:
        if len(self._rows) >= MAX_SESSIONS:
            for key in [k for k, s in self._rows.items() if s.expires_at <= now]:
                del self._rows[key]
            if len(self._rows) >= MAX_SESSIONS:  # still full: the oldest pre-sessions go first
                anon = sorted((s.expires_at, k) for k, s in self._rows.items() if not s.signed_in)
                for _, key in anon[: len(self._rows) - MAX_SESSIONS + 1]:
                    del self._rows[key]

    def _new(
        self, identity: dict[str, str] | None = None, token_expires_at: float | None = None
    ) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        expires = now + (SESSION_TTL_S if identity else ANON_TTL_S)
        if token_expires_at is not None:
            expires = min(expires, token_expires_at)
        ident = identity or {}
        session = Session(
            key=_key(session_id),
            csrf=secrets.token_urlsafe(32),
            expires_at=expires,
            token=ident.get("token"),
            token_id=ident.get("token_id", ""),
            label=ident.get("label", ""),
            role=ident.get("role", ""),
        )
        with self._lock:
            self._sweep(now)
            self._rows[session.key] = session
        return session_id, session

    def anonymous(self) -> tuple[str, Session]:
        """A pre-session for the sign-in form: a CSRF token, no identity."""
        return self._new()

    def sign_in(
        self, old_id: str | None, *, token: str, token_id: str, label: str, role: str, token_expires_at: float | None
    ) -> tuple[str, Session]:
        """A new session (new id, new CSRF token); the old one, if any, is deleted."""
        if old_id:
            self.delete(old_id)
        identity = {"token": token, "token_id": token_id, "label": label, "role": role}
        return self._new(identity, token_expires_at)

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        key = _key(session_id)
        with self._lock:
            session = self._rows.get(key)
            if session is not None and session.expires_at <= self._clock():
                del self._rows[key]
                return None
        return session

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._rows.pop(_key(session_id), None)

    def end_for_token(self, token_id: str) -> int:
        """Ends every session of a token (revoked in the console); how many ended."""
        with self._lock:
            keys = [k for k, s in self._rows.items() if s.token_id == token_id]
            for key in keys:
                del self._rows[key]
        return len(keys)

    def __len__(self) -> int:
        return len(self._rows)


def cookie_header(session_id: str, session: Session, now: float | None = None) -> str:
    max_age = max(0, int(session.expires_at - (time.time() if now is None else now)))
    return f"{COOKIE}={session_id}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Strict"


def expired_cookie_header() -> str:
    return f"{COOKIE}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Strict"
