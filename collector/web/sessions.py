"""Console sessions: rows in the metadata store keyed by the hash of a random id.

The browser holds only the session id, in a ``__Host-`` cookie (HttpOnly, Secure,
SameSite=Strict, Path=/, a Max-Age). The row (``collector.storage.sessions_schema``) is
in the database every replica shares, so a session works on any replica and survives a
restart; it holds the session's CSRF token and the engineer's token, so every page runs
the API's own checks with it (a revoked token ends the session at its next request).
Only the SHA-256 of an id is a key, and the token is stored sealed with AES-GCM under a
key derived from the id (HKDF-SHA256): the table alone names no usable cookie and holds
no usable token. Signing in always makes a new id (no fixation) and deletes the old row
in the same transaction; signing out deletes the row.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from collector.storage import Store
from collector.storage.sessions import SessionRow

__all__ = ["COOKIE", "SESSION_TTL_S", "Session", "SessionTable", "cookie_header", "expired_cookie_header"]

COOKIE = "__Host-casefile_session"
SESSION_TTL_S = 8 * 3600  # a working day; the token's own expiry ends it earlier
ANON_TTL_S = 15 * 60  # the sign-in form's pre-session (its CSRF token only)
MAX_ANONYMOUS = 10_000  # pre-sessions kept at most; the oldest go first
_NONCE = 12
_INFO = b"casefile console session token v1"


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


def _cipher(session_id: str) -> AESGCM:
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
    return AESGCM(kdf.derive(session_id.encode("utf-8", "replace")))


def _seal(session_id: str, key: str, token: str) -> bytes:
    nonce = secrets.token_bytes(_NONCE)
    return nonce + _cipher(session_id).encrypt(nonce, token.encode("utf-8"), key.encode("ascii"))


def _unseal(session_id: str, key: str, sealed: bytes) -> str | None:
    try:
        return _cipher(session_id).decrypt(sealed[:_NONCE], sealed[_NONCE:], key.encode("ascii")).decode("utf-8")
    except (InvalidTag, ValueError):
        return None


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


class SessionTable:
    """The sessions of every replica on one store; each method is one short transaction,
    run in a worker thread."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def _new(
        self, replaces: str | None, identity: dict[str, str] | None = None, token_expires_at: float | None = None
    ) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        expires = now + (SESSION_TTL_S if identity else ANON_TTL_S)
        if token_expires_at is not None:
            expires = min(expires, token_expires_at)
        ident = identity or {}
        key = _key(session_id)
        session = Session(
            key=key,
            csrf=secrets.token_urlsafe(32),
            expires_at=expires,
            token=ident.get("token"),
            token_id=ident.get("token_id", ""),
            label=ident.get("label", ""),
            role=ident.get("role", ""),
        )
        row = SessionRow(
            session_key=key,
            csrf=session.csrf,
            token_sealed=_seal(session_id, key, session.token) if session.token is not None else None,
            token_id=session.token_id,
            label=session.label,
            role=session.role,
            created_at_us=_us(now),
            expires_at_us=_us(expires),
        )
        old_key = _key(replaces) if replaces else None
        await asyncio.to_thread(self._store.put_session, row, replaces=old_key)
        return session_id, session

    async def anonymous(self, replaces: str | None = None) -> tuple[str, Session]:
        """A pre-session for the sign-in form: a CSRF token, no identity. The table is swept
        first (expired rows, pre-sessions beyond :data:`MAX_ANONYMOUS`)."""
        await asyncio.to_thread(self._store.sweep_sessions, _us(self._clock()), MAX_ANONYMOUS - 1)
        return await self._new(replaces)

    async def sign_in(
        self, old_id: str | None, *, token: str, token_id: str, label: str, role: str, token_expires_at: float | None
    ) -> tuple[str, Session]:
        """A new session (new id, new CSRF token); the old one, if any, is deleted with it."""
        identity = {"token": token, "token_id": token_id, "label": label, "role": role}
        return await self._new(old_id, identity, token_expires_at)

    async def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 200:
            return None
        key = _key(session_id)
        row = await asyncio.to_thread(self._store.get_session, key, _us(self._clock()))
        if row is None:
            return None
        token = None
        if row.token_sealed is not None:
            token = _unseal(session_id, key, row.token_sealed)
            if token is None:  # not sealed under this id: not this browser's session
                return None
        return Session(
            key=key, csrf=row.csrf, expires_at=row.expires_at_us / 1e6, token=token, token_id=row.token_id,
            label=row.label, role=row.role,
        )

    async def delete(self, session_id: str) -> None:
        if session_id:
            await asyncio.to_thread(self._store.delete_session, _key(session_id))

    async def end_for_token(self, token_id: str) -> int:
        """Ends every session of a token (revoked in the console), on every replica; how many ended."""
        return await asyncio.to_thread(self._store.delete_sessions_of_token, token_id)


def cookie_header(session_id: str, session: Session, now: float | None = None) -> str:
    max_age = max(0, int(session.expires_at - (time.time() if now is None else now)))
    return f"{COOKIE}={session_id}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Strict"


def expired_cookie_header() -> str:
    return f"{COOKIE}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Strict"
