"""Tokens: enrollment, case upload and engineer credentials.

A token is 256 random bits shown to its owner once as ``cf<e|c|u>_<43 chars>``
and stored only as its SHA-256. A fast hash is the right choice here, unlike for
passwords: with 256 bits of entropy there is nothing to brute-force, and a
lookup by hash avoids comparing secrets byte by byte in Python (the database
compares digests, which leak nothing useful about the secret).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, or_, select
from sqlalchemy.exc import IntegrityError

from collector.storage.base import StoreBase, opt_dt
from collector.storage.errors import AuthError, InvalidArgument, NotFound
from collector.storage.schema import from_micros, to_micros, tokens

__all__ = [
    "KINDS",
    "ROLES",
    "TokenMethods",
    "TokenRecord",
    "hash_secret",
    "looks_like_token",
    "new_secret",
    "new_token_id",
    "redact_tokens",
    "validate_token_request",
]

KINDS = frozenset({"enroll", "case", "engineer"})
ROLES = frozenset({"viewer", "engineer", "admin"})
_PREFIX = {"enroll": "cfe_", "case": "cfc_", "engineer": "cfu_"}
_TOKEN_RE = re.compile(r"cf[ecu]_[A-Za-z0-9_-]{43}")
_CASE_ID_MAX = 200


@dataclass(frozen=True)
class TokenRecord:
    """A stored token, without its secret. Times are microseconds since the epoch."""

    id: str
    kind: str
    role: str | None
    case_id: str | None
    label: str
    created_at_us: int
    expires_at_us: int | None
    max_uses: int | None
    uses: int
    revoked_at_us: int | None

    @property
    def created_at(self) -> datetime:
        return from_micros(self.created_at_us)

    @property
    def expires_at(self) -> datetime | None:
        return opt_dt(self.expires_at_us)

    @property
    def revoked_at(self) -> datetime | None:
        return opt_dt(self.revoked_at_us)

    def refusal(self, now: datetime) -> str | None:
        """Why this token cannot be used at ``now``, or ``None`` if it can."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "used up"
        return None


def new_secret(kind: str) -> str:
    """A fresh plaintext token of ``kind``: prefix + 32 random bytes, urlsafe base64."""
    return _PREFIX[kind] + secrets.token_urlsafe(32)


def new_token_id() -> str:
    return "tok_" + secrets.token_hex(5)


def hash_secret(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode("utf-8")).digest()


def looks_like_token(plaintext: str) -> bool:
    return _TOKEN_RE.fullmatch(plaintext) is not None


def redact_tokens(value: str) -> str:
    """Replace anything shaped like a token secret, so it never reaches the audit log."""
    return _TOKEN_RE.sub("[redacted token]", value)


def validate_token_request(
    kind: str,
    role: str | None,
    case_id: str | None,
    ttl: timedelta | None,
    max_uses: int | None,
) -> None:
    """Reject impossible combinations with a message naming the field."""
    if kind not in KINDS:
        raise InvalidArgument(f"token kind {kind!r} unknown; expected one of {sorted(KINDS)}")
    if kind == "engineer":
        if role not in ROLES:
            raise InvalidArgument(
                f"engineer tokens need a role, one of {sorted(ROLES)}; got {role!r}"
            )
    elif role is not None:
        raise InvalidArgument(f"role is only for engineer tokens, not {kind} tokens")
    if kind == "case":
        if not case_id:
            raise InvalidArgument("case tokens need a case_id")
        if len(case_id) > _CASE_ID_MAX:
            raise InvalidArgument(f"case_id is longer than {_CASE_ID_MAX} characters")
    elif case_id is not None:
        raise InvalidArgument(f"case_id is only for case tokens, not {kind} tokens")
    if ttl is not None and ttl <= timedelta(0):
        raise InvalidArgument(f"ttl must be positive, got {ttl}")
    if max_uses is not None and max_uses < 1:
        raise InvalidArgument(f"max_uses must be at least 1, got {max_uses}")


def _token(row: Row[Any] | Mapping[Any, Any]) -> TokenRecord:
    m = row._mapping if isinstance(row, Row) else row
    return TokenRecord(
        id=m["id"],
        kind=m["kind"],
        role=m["role"],
        case_id=m["case_id"],
        label=m["label"],
        created_at_us=m["created_at"],
        expires_at_us=m["expires_at"],
        max_uses=m["max_uses"],
        uses=m["uses"],
        revoked_at_us=m["revoked_at"],
    )


class TokenMethods(StoreBase):
    """Issuing, checking, counting and revoking tokens."""

    def create_token(
        self,
        kind: str,
        *,
        role: str | None = None,
        case_id: str | None = None,
        label: str = "",
        ttl: timedelta | None = None,
        max_uses: int | None = None,
    ) -> tuple[str, TokenRecord]:
        """Issue a token; the plaintext is returned here once and never stored."""
        validate_token_request(kind, role, case_id, ttl, max_uses)
        now = self._clock()
        for attempt in range(3):
            plaintext = new_secret(kind)
            values = {
                "id": new_token_id(),
                "kind": kind,
                "role": role,
                "case_id": case_id,
                "label": label,
                "secret_sha256": hash_secret(plaintext),
                "created_at": to_micros(now),
                "expires_at": None if ttl is None else to_micros(now + ttl),
                "max_uses": max_uses,
                "uses": 0,
                "revoked_at": None,
            }
            try:
                with self._write() as conn:
                    conn.execute(tokens.insert().values(values))
            except IntegrityError:
                # Only a 40-bit id collision can land here; draw again.
                if attempt == 2:
                    raise
                continue
            return plaintext, _token(values)
        raise AssertionError("unreachable")

    def get_token(self, token_id: str) -> TokenRecord:
        with self._read() as conn:
            row = conn.execute(select(tokens).where(tokens.c.id == token_id)).first()
        if row is None:
            raise NotFound(f"token {token_id!r} not found", what="token", key=token_id)
        return _token(row)

    def authenticate(
        self, plaintext: str, kinds: set[str] | frozenset[str], *, count_uses: bool = True
    ) -> TokenRecord:
        """The token record for ``plaintext`` if it is usable as one of ``kinds``.

        Does not count a use; call ``consume_token`` for that. With ``count_uses=False``
        a used-up (but unrevoked, unexpired) token still authenticates: the caller
        decides, as ingest does for the replay of a bundle already stored.
        """
        if not looks_like_token(plaintext):
            raise AuthError("unknown")
        with self._read() as conn:
            row = conn.execute(
                select(tokens).where(tokens.c.secret_sha256 == hash_secret(plaintext))
            ).first()
        if row is None:
            raise AuthError("unknown")
        rec = _token(row)
        if rec.kind not in kinds:
            raise AuthError("wrong kind", token_id=rec.id)
        reason = rec.refusal(self._clock())
        if reason is not None and (count_uses or reason != "used up"):
            raise AuthError(reason, token_id=rec.id)
        return rec

    def consume_token(self, token_id: str) -> TokenRecord:
        """Count one use, atomically; refuses revoked, expired and used-up tokens."""
        now = self._now()
        t = tokens.c
        stmt = (
            tokens.update()
            .where(
                t.id == token_id,
                t.revoked_at.is_(None),
                or_(t.expires_at.is_(None), t.expires_at > now),
                or_(t.max_uses.is_(None), t.uses < t.max_uses),
            )
            .values(uses=t.uses + 1)
            .returning(*tokens.c)
        )
        with self._write() as conn:
            row = conn.execute(stmt).first()
            if row is None:
                current = conn.execute(select(tokens).where(t.id == token_id)).first()
        if row is not None:
            return _token(row)
        if current is None:
            raise AuthError("unknown")
        rec = _token(current)
        raise AuthError(rec.refusal(from_micros(now)) or "used up", token_id=token_id)

    def list_tokens(self) -> list[TokenRecord]:
        with self._read() as conn:
            rows = conn.execute(select(tokens).order_by(tokens.c.created_at, tokens.c.id))
            return [_token(r) for r in rows]

    def revoke_token(self, token_id: str) -> TokenRecord:
        """Revoke; revoking twice keeps the first revocation time."""
        with self._write() as conn:
            conn.execute(
                tokens.update()
                .where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            row = conn.execute(select(tokens).where(tokens.c.id == token_id)).first()
        if row is None:
            raise NotFound(f"token {token_id!r} not found", what="token", key=token_id)
        return _token(row)
