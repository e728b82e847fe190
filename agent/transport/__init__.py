"""The agent's gRPC client side: channels to the collector, enrollment, upload."""

from agent.transport.client import UploadTarget, enroll, file_sha256, measure_clock_offset, upload_bundle
from agent.transport.connect import (
    CollectorAddress,
    certificate_fingerprint,
    fetch_certificate,
    is_loopback,
    open_channel,
    parse_address,
)

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
