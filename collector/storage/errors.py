"""The storage layer's exception tree.

    CasefileError (agent.errors)
    └── StoreError              metadata or blob store failed; root of this package's errors
        ├── SchemaError         the database's schema cannot be used (e.g. newer than this code)
        ├── AuthError           a token was refused; ``reason`` says why (never the token)
        ├── NotFound            no such token, agent, bundle or blob
        ├── Conflict            the write contradicts what is stored, or an upload is in progress
        └── InvalidArgument     the caller passed something malformed (also a ValueError)

The gRPC services map these to status codes in one place: AuthError →
UNAUTHENTICATED, NotFound → NOT_FOUND, Conflict → ALREADY_EXISTS / ABORTED,
InvalidArgument → INVALID_ARGUMENT, anything else → INTERNAL.
"""

from __future__ import annotations

from agent.errors import CasefileError

__all__ = ["AuthError", "Conflict", "InvalidArgument", "NotFound", "SchemaError", "StagedByOther", "StoreError"]


class StoreError(CasefileError):
    """The metadata or blob store failed."""


class SchemaError(StoreError):
    """The database schema is unknown to this code (newer, or damaged)."""

    def __init__(self, message: str, *, found: int | None = None, known: int | None = None) -> None:
        super().__init__(message)
        self.found = found
        self.known = known


class AuthError(StoreError):
    """A token was refused.

    ``reason`` is a short code: ``unknown``, ``wrong kind``, ``expired``,
    ``revoked`` or ``used up``. ``token_id`` is set when the token exists, so the
    audit log can name it; the plaintext never appears here.
    """

    def __init__(self, reason: str, *, token_id: str | None = None) -> None:
        super().__init__(f"token refused: {reason}")
        self.reason = reason
        self.token_id = token_id


class NotFound(StoreError):
    """The named object does not exist."""

    def __init__(self, message: str, *, what: str, key: str) -> None:
        super().__init__(message)
        self.what = what
        self.key = key


class Conflict(StoreError):
    """The write contradicts stored state (same id, different content) or is already under way."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class StagedByOther(StoreError):
    """A partial upload of this id is staged for other bytes or by another uploader."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class InvalidArgument(StoreError, ValueError):
    """Malformed input from the caller: a bad id, page token, size or combination.

    Also a ``ValueError`` so plain callers can catch it the usual way.
    """
