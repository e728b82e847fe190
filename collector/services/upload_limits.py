"""What one collector takes from uploaders: sizes, time, concurrency, decompression.

Everything an uploader sends is untrusted until its signature checks, and even a
signed bundle comes from a key that may be stolen or a case token a customer passed
on. These limits keep one sender from holding the collector: a stream must send its
header within seconds, an identity runs a few uploads at once, and a bundle's
decompression is bounded by its compressed size (``agent.bundle.source``).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from agent.bundle.names import is_bundle_id, is_sha256
from agent.bundle.reader import DEFAULT_MAX_RATIO, DEFAULT_MAX_TOTAL, DEFAULT_RATIO_FLOOR
from collector.edge import Rejected
from collector.upload_auth import UploadIdentity

__all__ = ["IngestLimits", "UploadSlots", "check_header_fields"]


@dataclass(frozen=True)
class IngestLimits:
    max_bundle_bytes: int = 4 * 1024**3
    # Chunks are 256 KiB by default; anything over 1 MiB is a client bug or an attack.
    max_chunk_bytes: int = 1024 * 1024
    # fsync the staged bytes this often so a crash loses little of a long upload.
    sync_every_bytes: int = 16 * 1024 * 1024
    # An agent sends its header as soon as the stream opens: a stream that has not
    # within this long is closed (each one held costs memory until then).
    header_timeout_s: float = 5.0
    # Streams waiting for their header at once; more are refused at once (RESOURCE_EXHAUSTED).
    max_headerless_streams: int = 1000
    # A stream that sends nothing for this long is dropped so its partial is free to resume.
    # A 256 KiB chunk takes 20 s at 100 kbit/s: a minute leaves slow links room.
    idle_timeout_s: float = 60.0
    # Uploads one identity (an agent, or every identity of one case token) runs at once;
    # the agent retries RESOURCE_EXHAUSTED with backoff.
    max_uploads_per_identity: int = 4
    # Uploads under one case token refused by verification before the token takes no more.
    max_refused_per_case_token: int = 10
    # Bundles at least this big are verified while they arrive, by a worker thread that
    # follows the staged file, so the receipt of a big bundle does not wait for a second
    # pass; at most ``stream_verify_workers`` such threads at once. Other uploads are
    # verified after their last byte, in ``verify_workers`` worker processes, where a
    # bomb's decompression never holds the lock the event loop needs. Neither uses the
    # default executor, which every database call goes through. One process: on two
    # cores a second one doubled ListHosts p99 while bombs arrived (bench_bombs.py).
    stream_verify_min_bytes: int = 8 * 1024 * 1024
    stream_verify_workers: int = 4
    verify_workers: int = 1
    # Verifiers run this much nicer than the collector (processes; follower threads on
    # Linux, which keeps a nice value per thread), so serving queries comes first; all but
    # one follower, the lead, whose upload's receipt waits for it (collector.services.verifier).
    verify_nice: int = 10
    # Decompression bound of every bundle (see agent.bundle.source).
    max_decompressed_bytes: int = DEFAULT_MAX_TOTAL
    max_compression_ratio: int = DEFAULT_MAX_RATIO
    ratio_floor_bytes: int = DEFAULT_RATIO_FLOOR


def check_header_fields(bundle_id: str, size: int, sha256: str, limits: IngestLimits) -> None:
    if not is_bundle_id(bundle_id):
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"malformed header: bundle_id must be 32 lowercase hex characters, got {bundle_id!r:.60}",
        )
    if not is_sha256(sha256):
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"malformed header for bundle {bundle_id}: sha256 must be 64 lowercase hex characters",
        )
    if size <= 0:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"malformed header for bundle {bundle_id}: size is 0")
    if size > limits.max_bundle_bytes:
        raise Rejected(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"bundle {bundle_id} is {size} bytes; this collector accepts at most {limits.max_bundle_bytes}",
        )


class UploadSlots:
    """Uploads in flight per identity: at most ``limit`` bundles each.

    A case token's identities share one count (a new key is a new identity, so counting
    per key would not bound a token). A second stream of a bundle already in flight
    takes no slot of its own: it takes over the first (``IngestService._take_staging``).
    Used from the event loop only.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held: dict[str, dict[str, int]] = {}

    @staticmethod
    def owner(identity: UploadIdentity) -> str:
        token = identity.case_token
        return f"case token {token.id}" if token is not None else f"agent {identity.agent.id}"

    def take(self, identity: UploadIdentity, bundle_id: str) -> None:
        owner = self.owner(identity)
        held = self._held.setdefault(owner, {})
        if bundle_id not in held and len(held) >= self._limit:
            raise Rejected(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"bundle {bundle_id}: {owner} already has {len(held)} uploads in progress "
                f"(at most {self._limit}); try again when one ends",
            )
        held[bundle_id] = held.get(bundle_id, 0) + 1

    def release(self, identity: UploadIdentity, bundle_id: str) -> None:
        owner = self.owner(identity)
        held = self._held.get(owner, {})
        left = held.get(bundle_id, 0) - 1
        if left > 0:
            held[bundle_id] = left
        else:
            held.pop(bundle_id, None)
            if not held:
                self._held.pop(owner, None)

    def in_flight(self, identity: UploadIdentity) -> int:
        return len(self._held.get(self.owner(identity), {}))

    def in_flight_count(self) -> int:
        """Uploads in flight, all identities together."""
        return sum(len(held) for held in self._held.values())
