"""``verify_bundle`` in another process: its result and cost as plain, picklable data.

A collector verifies untrusted uploads in worker processes so that decompressing and
hashing them never holds the interpreter lock its event loop needs. What crosses the
process boundary must pickle, and ``VerificationError``, with its keyword-only fields,
does not survive that; so the worker returns a ``VerifyOutcome`` and the caller turns
it back into the bundle or the error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from agent.bundle.members import VerifiedBundle
from agent.bundle.reader import verify_bundle
from agent.bundle.source import ReadMeter
from agent.errors import VerificationError

__all__ = ["VerifyOutcome", "verify_outcome"]


@dataclass(frozen=True)
class VerifyOutcome:
    """The verified bundle or the refusal (message, reason, member), and what it cost."""

    verified: VerifiedBundle | None
    refusal: tuple[str, str, str | None] | None
    decompressed: int
    compressed: int

    def result(self) -> VerifiedBundle:
        """The bundle, or the VerificationError the worker met, raised here."""
        if self.refusal is not None:
            message, reason, member = self.refusal
            raise VerificationError(message, reason=reason, member=member)
        assert self.verified is not None
        return self.verified


def verify_outcome(path: str | os.PathLike[str], **kwargs: Any) -> VerifyOutcome:
    """``verify_bundle(path, **kwargs)`` with its refusal returned, not raised."""
    meter = ReadMeter()
    try:
        verified = verify_bundle(path, meter=meter, **kwargs)
    except VerificationError as exc:
        return VerifyOutcome(None, (str(exc), exc.reason, exc.member), meter.decompressed, meter.compressed)
    return VerifyOutcome(verified, None, meter.decompressed, meter.compressed)
