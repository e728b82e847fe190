"""The agent's exception tree. Every error Casefile raises on purpose is one of these.

    CasefileError                  root; carries a one-line message for the user
    ├── KeyStoreError              agent key missing, unreadable, wrong mode or format
    ├── CollectionError            the collection framework itself failed (not one collector)
    ├── BundleError                a bundle could not be written or read
    │   └── VerificationError      a bundle failed verification; names member and mismatch
    └── TransportError             talking to the collector failed
        ├── EnrollmentError        the collector refused an enrollment
        └── UploadError            an upload was refused or could not complete

Exceptions carry context (bundle id, member path, peer) as attributes so the CLI
and the collector can map them to one clear line or a gRPC status in one place.
"""

from __future__ import annotations


class CasefileError(Exception):
    """Root of every error Casefile raises deliberately."""


class KeyStoreError(CasefileError):
    """The agent's signing key could not be created, loaded or trusted."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CollectionError(CasefileError):
    """The collection framework failed as a whole (one collector failing is not this)."""


class BundleError(CasefileError):
    """A bundle could not be written or read."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class VerificationError(BundleError):
    """A bundle failed verification.

    ``member`` names the archive member at fault (or ``None`` for the archive as a
    whole); ``reason`` is a short machine-readable code such as ``hash-mismatch``.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        member: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.reason = reason
        self.member = member


class TransportError(CasefileError):
    """Talking to the collector failed."""

    def __init__(self, message: str, *, peer: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.peer = peer
        self.code = code


class EnrollmentError(TransportError):
    """The collector refused to enroll this agent."""


class UploadError(TransportError):
    """The collector refused a bundle or the upload could not complete."""

    def __init__(
        self,
        message: str,
        *,
        bundle_id: str | None = None,
        peer: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, peer=peer, code=code)
        self.bundle_id = bundle_id


class SealedBundleError(CasefileError):
    """The file is a sealed (age-encrypted) bundle: only its recipient can open it (``casefile`` exit 5)."""
