"""The agent's gRPC client side: channels to the collector, enrollment, upload.

The Enroll/Ingest client (``agent.transport.client``) loads on first use of one of its
names: the resident daemon imports this package only to dial the collector, and its
uploads run in a child process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.transport.connect import (
    CollectorAddress,
    certificate_fingerprint,
    fetch_certificate,
    is_loopback,
    open_channel,
    parse_address,
)

if TYPE_CHECKING:
    from agent.transport.client import UploadTarget, enroll, file_sha256, measure_clock_offset, upload_bundle

__all__ = [
    "CollectorAddress",
    "UploadTarget",
    "certificate_fingerprint",
    "enroll",
    "fetch_certificate",
    "file_sha256",
    "is_loopback",
    "measure_clock_offset",
    "open_channel",
    "parse_address",
    "upload_bundle",
]

_CLIENT_NAMES = frozenset({"UploadTarget", "enroll", "file_sha256", "measure_clock_offset", "upload_bundle"})


def __getattr__(name: str) -> object:
    if name in _CLIENT_NAMES:
        from agent.transport import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
