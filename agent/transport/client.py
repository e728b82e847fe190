"""The agent's side of Enroll and Ingest: enrollment and resumable bundle upload."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.errors import EnrollmentError, UploadError
from agent.keys import SigningKey
from agent.transport.proof import make_proof
from protos import collector_pb2, collector_pb2_grpc

__all__ = ["UploadTarget", "enroll", "file_sha256", "measure_clock_offset", "upload_bundle"]

CHUNK_BYTES = 256 * 1024  # the best throughput measured for grpc.aio client streams

# Statuses worth another try: the connection or the collector went away, or the
# collector is still closing our previous (cut) stream for the same bundle.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}


def _untrusted(err: grpc.RpcError) -> bool:
    """The TLS handshake failed on the collector's certificate: no retry will change that."""
    detail = err.details() if hasattr(err, "details") else str(err)
    return "CERTIFICATE_VERIFY_FAILED" in (detail or "").upper()


def _fail(cls: type[UploadError] | type[EnrollmentError], what: str, err: grpc.RpcError) -> Exception:
    code = err.code() if hasattr(err, "code") else None
    detail = err.details() if hasattr(err, "details") else str(err)
    name = code.name if code else "UNKNOWN"
    if _untrusted(err):
        detail = (
            "the collector's certificate is not trusted here: pass --ca-fingerprint sha256:<hex> "
            f"(what the collector printed at start, from support) or --ca-file ({detail})"
        )
    return cls(f"{what}: {name}: {detail}", code=name)


def enroll(
    channel: grpc.Channel,
    *,
    token: str,
    key: SigningKey,
    hostname: str,
    agent_version: str,
    labels: tuple[str, ...] = (),
) -> collector_pb2.EnrollResponse:
    stub = collector_pb2_grpc.EnrollStub(channel)
    try:
        resp: collector_pb2.EnrollResponse = stub.Enroll(
            collector_pb2.EnrollRequest(
                token=token,
                public_key=key.public.raw,
                hostname=hostname,
                agent_version=agent_version,
                labels=list(labels),
            ),
            timeout=30,
        )
    except grpc.RpcError as err:
        raise _fail(EnrollmentError, "enrollment refused", err) from None
    if resp.key_fingerprint != key.fingerprint:
        raise EnrollmentError(f"collector recorded key {resp.key_fingerprint}, expected {key.fingerprint}")
    return resp


def measure_clock_offset(channel: grpc.Channel, samples: int = 3) -> float:
    """Collector clock minus ours, in ms, from the round trip with the smallest delay.

    NTP's reasoning: the collector read its clock somewhere in the round trip, so the
    midpoint is the best guess, and the shortest round trip bounds the error best.
    """
    stub = collector_pb2_grpc.IngestStub(channel)
    best: tuple[float, float] | None = None
    for _ in range(samples):
        t0 = time.time()
        try:
            resp: collector_pb2.ClockResponse = stub.Clock(collector_pb2.ClockRequest(), timeout=5)
        except grpc.RpcError as err:
            raise _fail(UploadError, "cannot read the collector's clock", err) from None
        t1 = time.time()
        offset_ms = (resp.now.ToNanoseconds() / 1e9 - (t0 + t1) / 2) * 1000
        if best is None or t1 - t0 < best[0]:
            best = (t1 - t0, offset_ms)
    assert best is not None
    return best[1]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1024 * 1024):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class UploadTarget:
    """Who is uploading: an enrolled agent id, or a case token for a one-shot upload."""

    key: SigningKey
    agent_id: str = ""
    case_token: str | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.case_token}"),) if self.case_token else ()


# A deadline for the Upload stream, so a stream the collector never answers (a half-dead
# connection, a lost status) ends and is retried instead of hanging the agent for ever.
# Generous: a fixed allowance for verification and commit, plus the bytes still to send
# at a slow link's rate.
UPLOAD_BASE_S = 300.0
UPLOAD_MIN_BYTES_PER_S = 64 * 1024


def upload_deadline_s(remaining_bytes: int) -> float:
    """Seconds the Upload stream may take for ``remaining_bytes`` still to send."""
    return UPLOAD_BASE_S + max(0, remaining_bytes) / UPLOAD_MIN_BYTES_PER_S


# A bundle this small (a live answer, a few KiB to a few chunks) goes straight to Upload
# at offset 0 on its first attempt: one RPC and one authorisation instead of two. The
# collector answers a stored bundle with its receipt and a partial it holds at another
# offset with FAILED_PRECONDITION, before any byte is kept, and then this client asks
# GetUploadState and resumes as for a large bundle. A larger bundle always asks first:
# a blind start would resend what the collector already has.
DIRECT_MAX_BYTES = 4 * CHUNK_BYTES


def upload_bundle(
    channel: grpc.Channel,
    path: Path,
    *,
    bundle_id: str,
    target: UploadTarget,
    attempts: int = 6,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> collector_pb2.Receipt:
    """Upload ``path``, resuming from whatever the collector already holds.

    Each attempt asks the collector for its committed offset and streams the rest; a
    small bundle's first attempt streams from offset 0 without asking (``DIRECT_MAX_BYTES``).
    """
    stub = collector_pb2_grpc.IngestStub(channel)
    size = path.stat().st_size
    sha = file_sha256(path)
    meta = target.metadata()
    last: grpc.RpcError | None = None
    direct = size <= DIRECT_MAX_BYTES
    attempt = 0
    while attempt < attempts:
        if attempt:
            # Exponential backoff with full jitter: a restarted collector is not stormed.
            time.sleep(random.uniform(0, min(8.0, 0.25 * 2**attempt)))
        proof = make_proof(target.key, agent_id=target.agent_id, bundle_id=bundle_id, sha256=sha, size=size)
        try:
            offset = 0
            if not direct:
                state: collector_pb2.UploadState = stub.GetUploadState(
                    collector_pb2.UploadStateRequest(bundle_id=bundle_id, size=size, sha256=sha, proof=proof),
                    metadata=meta,
                    timeout=30,
                )
                if state.complete:
                    return state.receipt
                offset = state.committed_offset
            header = collector_pb2.UploadHeader(
                bundle_id=bundle_id, size=size, sha256=sha, offset=offset, proof=proof, file_name=path.name
            )
            # A direct attempt reports nothing while it streams: gRPC reads the chunks ahead
            # of the collector's answer, and a refused guess would show bytes never kept.
            chunks = _chunks(path, header, chunk_bytes, None if direct else progress)
            timeout = upload_deadline_s(size - offset)
            receipt: collector_pb2.Receipt = stub.Upload(chunks, metadata=meta, timeout=timeout)
            if direct and progress:
                progress(size, size)
            return receipt
        except grpc.RpcError as err:
            if err.code() not in _RETRYABLE or _untrusted(err):
                raise _fail(UploadError, f"upload of bundle {bundle_id} failed", err) from None
            last = err
            if direct and err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                # The collector holds a partial at another offset: ask where, at once,
                # without spending an attempt (nothing failed, the guess was wrong).
                direct = False
                continue
            direct = False
        attempt += 1
    assert last is not None
    raise _fail(UploadError, f"upload of bundle {bundle_id} gave up after {attempts} attempts", last)


def _chunks(
    path: Path,
    header: collector_pb2.UploadHeader,
    chunk_bytes: int,
    progress: Callable[[int, int], None] | None,
) -> Iterator[collector_pb2.UploadChunk]:
    yield collector_pb2.UploadChunk(header=header)
    sent = header.offset
    if progress:  # where this attempt starts: a resume shows as a first call above zero
        progress(sent, header.size)
    with path.open("rb") as fh:
        fh.seek(header.offset)
        while block := fh.read(chunk_bytes):
            yield collector_pb2.UploadChunk(data=block)
            sent += len(block)
            if progress:
                progress(sent, header.size)
