"""Ingest: resumable, verified, idempotent bundle upload (DESIGN §4).

A bundle becomes visible only after its bytes hash to the header's SHA-256, its
manifest signature checks against the uploader's enrolled key (under a case token:
against the key its manifest names, stored as its origin), and every member
matches the manifest; then the blob is moved into the content-addressed store and the
metadata row is written in one transaction. Until then it is a staged partial that a
later stream can resume from the collector's durable offset.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from agent.bundle import VerifiedBundle, is_bundle_id, verify_bundle
from agent.errors import VerificationError
from collector.auth import UploadIdentity, authorize_upload
from collector.edge import Rejected, unary
from collector.metrics import CollectorMetrics
from collector.storage import BlobStore, BundleRecord, Store
from collector.storage.counts import collector_counts
from collector.storage.errors import AuthError, Conflict, NotFound, StagedByOther
from collector.timestamps import timestamp_us
from protos import collector_pb2, collector_pb2_grpc, facts_pb2

__all__ = ["IngestLimits", "IngestService", "OnStored", "receipt_for"]

# Called after a bundle is stored (or found already stored) with its record and the
# manifest's request id ("" outside live snapshots); the live router uses it to finish
# the engineer's request. Never allowed to fail the upload.
OnStored = Callable[[BundleRecord, str], Awaitable[None]]

log = logging.getLogger("casefile.collector.ingest")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class IngestLimits:
    max_bundle_bytes: int = 4 * 1024**3
    # Chunks are 256 KiB by default; anything over 1 MiB is a client bug or an attack.
    max_chunk_bytes: int = 1024 * 1024
    # fsync the staged bytes this often so a crash loses little of a long upload.
    sync_every_bytes: int = 16 * 1024 * 1024
    # A stream that sends nothing for this long is dropped so its partial is free to resume.
    idle_timeout_s: float = 120.0
    # Bundles at least this big are verified while they arrive, by a worker thread that
    # follows the staged file, so the receipt does not wait for a second pass. At most
    # this many such workers at once; other uploads are verified after their last byte.
    stream_verify_min_bytes: int = 1024 * 1024
    stream_verify_workers: int = 4


@dataclass(frozen=True)
class _Stream:
    """The stream this process runs for a bundle id: who sends which bytes."""

    task: asyncio.Task[Any]
    agent_id: str
    size: int
    sha256: str


class _Abandoned(Exception):
    """The upload stopped before its last byte; the verifier following it gives up."""


class _StagedTail:
    """The staged file as the verifier reads it while the upload is still arriving.

    ``read`` returns only bytes the receiver has published (written and hashed); it
    blocks for more until the receiver calls ``end`` (then end of file) or ``abandon``
    (then it raises). The chunks just published are also held in memory (up to
    ``_HELD_BYTES``), so a verifier that keeps up takes them as they are; one that
    falls behind reads the file, with its own descriptor, so the receiver's writes and
    the verifier's reads never share a file position.
    """

    _HELD_BYTES = 8 * 1024 * 1024

    def __init__(self, path: Path, available: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._cond = threading.Condition()
        self._available = available
        self._pos = 0
        self._state = "open"  # open | ended | abandoned
        self._held: collections.deque[tuple[int, bytes]] = collections.deque()
        self._held_bytes = 0

    def publish(self, offset: int, data: bytes = b"") -> None:
        """Bytes up to ``offset`` are in the file; ``data`` are the last of them."""
        with self._cond:
            if data:
                self._held.append((offset - len(data), data))
                self._held_bytes += len(data)
                while self._held_bytes > self._HELD_BYTES:
                    self._held_bytes -= len(self._held.popleft()[1])
            self._available = offset
            self._cond.notify()

    def end(self) -> None:
        with self._cond:
            self._state = "ended"
            self._cond.notify()

    def abandon(self) -> None:
        with self._cond:
            if self._state == "open":
                self._state = "abandoned"
            self._cond.notify()

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while self._pos >= self._available and self._state == "open":
                self._cond.wait()
            if self._state == "abandoned":
                raise _Abandoned()
            ready = self._available - self._pos
            want = ready if size < 0 else min(size, ready)
            piece = self._from_memory(want) if want > 0 else b""
        if ready <= 0:
            return b""
        data = piece or os.pread(self._fd, want, self._pos)
        self._pos += len(data)
        return data

    def _from_memory(self, want: int) -> bytes:
        """Up to ``want`` bytes at the read position from the held chunks, or b"" (caller holds the lock)."""
        held, pos = self._held, self._pos
        while held and held[0][0] + len(held[0][1]) <= pos:
            self._held_bytes -= len(held.popleft()[1])
        if not held or held[0][0] > pos:
            return b""
        start, chunk = held[0]
        if start == pos and len(chunk) <= want:
            return chunk  # the common case: whole chunks, no copy
        return chunk[pos - start : pos - start + want]

    def close(self) -> None:
        os.close(self._fd)


_Following = tuple[_StagedTail, "asyncio.Future[VerifiedBundle]"]


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark an outcome nobody may await (an abandoned verifier) as seen."""
    if not fut.cancelled():
        fut.exception()


def _verify_following(tail: _StagedTail, key: Any, finished: Callable[[], None]) -> VerifiedBundle:
    try:
        return verify_bundle(tail, expected_key=key, keep=("facts.pb",))  # type: ignore[arg-type]
    finally:
        tail.close()
        finished()


def receipt_for(rec: BundleRecord) -> collector_pb2.Receipt:
    return collector_pb2.Receipt(
        bundle_id=rec.bundle_id,
        sha256=rec.sha256,
        size=rec.size,
        agent_id=rec.agent_id,
        hostname=rec.hostname,
        case_id=rec.case_id or "",
        received_at=timestamp_us(rec.received_at_us),
        key_fingerprint=rec.key_fingerprint,
    )


def _check_header_fields(bundle_id: str, size: int, sha256: str, limits: IngestLimits) -> None:
    if not is_bundle_id(bundle_id):
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"malformed header: bundle_id must be 32 lowercase hex characters, got {bundle_id!r:.60}",
        )
    if not _HEX64.match(sha256):
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


class IngestService(collector_pb2_grpc.IngestServicer):
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        limits: IngestLimits | None = None,
        on_stored: OnStored | None = None,
        metrics: CollectorMetrics | None = None,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._limits = limits or IngestLimits()
        self._active: dict[str, _Stream] = {}
        # Handlers cancelled because a newer stream of the same upload took over: they
        # answer ABORTED instead of ending without a status.
        self._superseded: set[asyncio.Task[Any]] = set()
        self._committing: set[asyncio.Task[collector_pb2.Receipt]] = set()
        self._on_stored = on_stored
        self._metrics = metrics
        self._verifiers: ThreadPoolExecutor | None = None
        self._verifying = 0

    def close(self) -> None:
        """Let the verifier threads go (uploads still running were abandoned by then)."""
        if self._verifiers is not None:
            # Queued verifiers still run: their uploads were abandoned, so they end at once.
            self._verifiers.shutdown(wait=False)
            self._verifiers = None

    def _follow(self, staged: Any, identity: UploadIdentity) -> _Following | None:
        """Start verifying this upload while it arrives, if it is big enough and a worker is free."""
        limits = self._limits
        if staged.size < limits.stream_verify_min_bytes or self._verifying >= limits.stream_verify_workers:
            return None
        if self._verifiers is None:
            self._verifiers = ThreadPoolExecutor(limits.stream_verify_workers, thread_name_prefix="casefile-verify")
        try:
            tail = _StagedTail(staged.path, staged.offset)
        except OSError as exc:  # out of descriptors, say: verify after the last byte instead
            log.warning("bundle %s: verifying after receipt, not while receiving: %s", staged.bundle_id, exc)
            return None
        loop = asyncio.get_running_loop()
        self._verifying += 1

        def finished() -> None:
            # Counted down by the worker itself: its thread, not the awaiting future, holds the slot.
            with contextlib.suppress(RuntimeError):  # the loop is gone at shutdown
                loop.call_soon_threadsafe(self._verifier_done)

        fut = loop.run_in_executor(self._verifiers, _verify_following, tail, identity.bundle_key, finished)
        fut.add_done_callback(_retrieve)
        return tail, fut

    def _verifier_done(self) -> None:
        self._verifying -= 1

    def _verification_failed(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.verification_failed(reason)

    async def _existing(self, bundle_id: str, sha256: str) -> BundleRecord | None:
        try:
            rec = await asyncio.to_thread(self._store.get_bundle, bundle_id)
        except NotFound:
            return None
        if rec.sha256 != sha256:
            raise Rejected(
                grpc.StatusCode.ALREADY_EXISTS,
                f"bundle {bundle_id} is already stored with sha256 {rec.sha256[:16]}…; "
                f"refusing different bytes ({sha256[:16]}…) under the same id",
            )
        return rec

    @unary
    async def Clock(
        self, request: collector_pb2.ClockRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.ClockResponse:
        resp = collector_pb2.ClockResponse()
        resp.now.GetCurrentTime()
        return resp

    @unary
    async def GetUploadState(
        self,
        request: collector_pb2.UploadStateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> collector_pb2.UploadState:
        _check_header_fields(request.bundle_id, request.size, request.sha256, self._limits)
        identity = await authorize_upload(
            self._store,
            context,
            bundle_id=request.bundle_id,
            sha256=request.sha256,
            size=request.size,
            proof=request.proof,
        )
        existing = await self._existing(request.bundle_id, request.sha256)
        if existing is not None:
            return collector_pb2.UploadState(
                committed_offset=existing.size, complete=True, receipt=receipt_for(existing)
            )
        _require_uses_left(identity, request.bundle_id)
        offset = await asyncio.to_thread(self._blobs.staged_offset, request.bundle_id, request.size, request.sha256)
        return collector_pb2.UploadState(committed_offset=offset)

    @unary
    async def Upload(
        self,
        request_iterator: AsyncIterator[collector_pb2.UploadChunk],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> collector_pb2.Receipt:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise Rejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed upload: the first message must be the header",
            )
        header = first.header
        _check_header_fields(header.bundle_id, header.size, header.sha256, self._limits)
        identity = await authorize_upload(
            self._store,
            context,
            bundle_id=header.bundle_id,
            sha256=header.sha256,
            size=header.size,
            proof=header.proof,
        )
        existing = await self._existing(header.bundle_id, header.sha256)
        if existing is not None:
            return receipt_for(existing)  # idempotent: same id, same bytes, same receipt
        _require_uses_left(identity, header.bundle_id)

        staged = await self._take_staging(header, identity)
        this = asyncio.current_task()
        if this is not None:
            self._active[header.bundle_id] = _Stream(this, identity.agent.id, header.size, header.sha256)
        resumed_at = staged.offset
        handed_over = False
        following: _Following | None = None
        if self._metrics is not None:
            self._metrics.uploads_in_flight.inc()
        try:
            if header.offset != staged.offset:
                raise Rejected(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"bundle {header.bundle_id}: stream starts at byte {header.offset} but the "
                    f"collector holds {staged.offset}; ask GetUploadState and resume from there",
                )
            following = self._follow(staged, identity)
            await self._receive(request_iterator, staged, header, following[0] if following else None)
            if staged.sha256_hex() != header.sha256:
                actual = staged.sha256_hex()
                self._verification_failed("sha256-mismatch")
                await asyncio.to_thread(staged.abort)
                raise Rejected(
                    grpc.StatusCode.DATA_LOSS,
                    f"bundle {header.bundle_id}: received bytes hash to {actual[:16]}…, header "
                    f"says {header.sha256[:16]}…; the partial was discarded, upload again",
                )
            # Every byte is here and hashes right: from now on the client leaving must not
            # stop the commit half-way (a blob without its row, a partial already gone).
            # The commit runs as its own task that owns the partial; the agent finds the
            # bundle stored when it asks again.
            verified = None
            if following is not None:
                following[0].end()
                verified = following[1]
            committer = asyncio.create_task(self._commit_and_close(staged, header, identity, verified))
            handed_over = True
            self._committing.add(committer)
            committer.add_done_callback(self._committing.discard)
            return await asyncio.shield(committer)
        except asyncio.CancelledError:
            if this is None or this not in self._superseded:
                raise
            # Cancelled by _take_staging, not by gRPC: this client is still there and
            # must hear why its stream ends (grpc.aio sends no status for a cancelled handler).
            self._superseded.discard(this)
            this.uncancel()
            raise Rejected(
                grpc.StatusCode.ABORTED,
                f"bundle {header.bundle_id}: a newer stream of the same upload took over at byte "
                f"{staged.offset}; ask GetUploadState and resume",
            ) from None
        finally:
            # Runs on cancellation too: whatever arrived becomes the durable resume point.
            if not handed_over:
                if following is not None:
                    following[0].abandon()
                staged.close()
            current = self._active.get(header.bundle_id)
            if current is not None and current.task is this:
                del self._active[header.bundle_id]
            if this is not None:
                self._superseded.discard(this)
            if self._metrics is not None:
                self._metrics.uploads_in_flight.dec()
                self._metrics.ingested_bytes.inc(max(0, staged.offset - resumed_at))

    async def _take_staging(self, header: collector_pb2.UploadHeader, identity: UploadIdentity) -> Any:
        """The staged partial for this bundle, taking it over from a stream that went quiet.

        An agent resumes only after it lost its previous stream, so a stream this process
        still holds for the same bundle is a dead connection not noticed yet (a NAT or
        proxy dropped it without a reset): the newest stream of the same agent, for the
        same size and sha256, wins, and the older one is answered ABORTED. Anyone else is
        refused, and a staged partial is never reset for other bytes or another agent.
        A partial held by another process stays theirs (ABORTED: try again).
        """
        bundle_id = header.bundle_id
        for attempt in range(2):
            try:
                return await self._open_upload(header, identity.agent.id)
            except StagedByOther as exc:
                raise Rejected(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"bundle {bundle_id}: {exc}; refusing to replace it (a bundle id is not reusable)",
                ) from None
            except Conflict as exc:
                previous = self._active.get(bundle_id)
                if attempt or previous is None or previous.task.done():
                    raise Rejected(grpc.StatusCode.ABORTED, f"bundle {bundle_id}: {exc}") from None
                if previous.agent_id != identity.agent.id:
                    raise Rejected(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"bundle {bundle_id} is being uploaded by another agent; it cannot be taken over",
                    ) from None
                if (previous.size, previous.sha256) != (header.size, header.sha256):
                    raise Rejected(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"bundle {bundle_id} is being uploaded with another size/sha256; "
                        "refusing different bytes under the same id",
                    ) from None
                log.info("bundle %s: a new stream takes over from one that went quiet", bundle_id)
                self._superseded.add(previous.task)
                previous.task.cancel()
                await asyncio.wait({previous.task}, timeout=10)
        raise AssertionError("unreachable")

    async def _commit_and_close(
        self,
        staged: Any,
        header: collector_pb2.UploadHeader,
        identity: UploadIdentity,
        verified: asyncio.Future[VerifiedBundle] | None,
    ) -> collector_pb2.Receipt:
        try:
            return await self._commit(staged, header, identity, verified)
        finally:
            staged.close()

    async def _open_upload(self, header: collector_pb2.UploadHeader, owner: str) -> Any:
        """open_upload in a thread, without leaking its lock if this stream is cancelled
        while the thread runs (the thread finishes anyway: whatever it took is closed)."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(
            None,
            functools.partial(self._blobs.open_upload, header.bundle_id, header.size, header.sha256, owner=owner),
        )
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:

            def release(done: asyncio.Future[Any]) -> None:
                if not done.cancelled() and done.exception() is None:
                    done.result().close()

            fut.add_done_callback(release)
            raise

    async def _receive(
        self,
        request_iterator: AsyncIterator[collector_pb2.UploadChunk],
        staged: Any,
        header: collector_pb2.UploadHeader,
        tail: _StagedTail | None,
    ) -> None:
        limits = self._limits
        stream = aiter(request_iterator)
        # One fsync at a time runs in a thread while the stream goes on.
        syncing: asyncio.Future[None] | None = None
        try:
            while True:
                try:
                    async with asyncio.timeout(limits.idle_timeout_s):
                        msg = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise Rejected(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"bundle {header.bundle_id}: no data for {limits.idle_timeout_s:g} s at byte "
                        f"{staged.offset}; resume from there",
                    ) from None
                if msg.WhichOneof("part") != "data":
                    raise Rejected(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"bundle {header.bundle_id}: a second header at byte {staged.offset}",
                    )
                n = len(msg.data)
                if n > limits.max_chunk_bytes:
                    raise Rejected(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"bundle {header.bundle_id}: chunk of {n} bytes at byte {staged.offset} "
                        f"exceeds the {limits.max_chunk_bytes}-byte limit",
                    )
                if staged.offset + n > header.size:
                    raise Rejected(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"bundle {header.bundle_id}: data runs past the declared size "
                        f"{header.size} at byte {staged.offset + n}",
                    )
                # A page-cache write plus hashing of ≤1 MiB: cheaper inline than a thread hop
                # (measured: handing each chunk to a thread cut throughput by a third).
                staged.append(msg.data, autosync=False)
                if tail is not None:
                    tail.publish(staged.offset, msg.data)
                behind = staged.offset - staged.durable_offset
                if (syncing is None or syncing.done()) and behind >= limits.sync_every_bytes:
                    syncing = asyncio.ensure_future(asyncio.to_thread(staged.sync))
        finally:
            # The sync in a thread finishes before the partial is recorded, even if this
            # stream is cancelled again meanwhile (a takeover after a disconnect).
            cancelled: asyncio.CancelledError | None = None
            while syncing is not None and not syncing.done():
                try:
                    await asyncio.shield(syncing)
                except asyncio.CancelledError as exc:
                    cancelled = exc
                except Exception:
                    break
            failed = syncing.exception() if syncing is not None and not syncing.cancelled() else None
            if failed is None:
                staged.sync()
            if cancelled is not None:
                raise cancelled
        if failed is not None:
            # The kernel reports a lost write once: what is staged cannot be trusted now.
            log.error("bundle %s: fsync of the staged upload failed: %s", header.bundle_id, failed)
            await asyncio.to_thread(staged.abort)
            raise Rejected(
                grpc.StatusCode.UNAVAILABLE,
                f"bundle {header.bundle_id}: the collector could not store the upload durably ({failed}); "
                "the partial was discarded, upload again",
            )
        if staged.offset < header.size:
            raise Rejected(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"bundle {header.bundle_id}: stream ended at byte {staged.offset} of "
                f"{header.size}; resume from {staged.offset}",
            )

    async def _commit(
        self,
        staged: Any,
        header: collector_pb2.UploadHeader,
        identity: UploadIdentity,
        verified: asyncio.Future[VerifiedBundle] | None,
    ) -> collector_pb2.Receipt:
        bundle_id = header.bundle_id
        try:
            if verified is not None:
                vb: VerifiedBundle = await verified
            else:
                vb = await asyncio.to_thread(
                    verify_bundle, staged.path, expected_key=identity.bundle_key, keep=("facts.pb",)
                )
        except Exception as exc:
            self._verification_failed(exc.reason if isinstance(exc, VerificationError) else "unreadable")
            await asyncio.to_thread(staged.abort)
            raise
        manifest = vb.manifest
        problems = []
        if manifest.get("bundle_id") != bundle_id:
            problems.append(f"manifest bundle_id {manifest.get('bundle_id')!r} != header {bundle_id}")
        if identity.case_token is None and manifest.get("agent_id") not in ("", identity.agent.id):
            problems.append(f"manifest agent_id {manifest.get('agent_id')!r} != uploader {identity.agent.id}")
        if identity.case_token is not None and manifest.get("case_id") != identity.case_token.case_id:
            problems.append(
                f"manifest case_id {manifest.get('case_id')!r} is not the token's case {identity.case_token.case_id!r}"
            )
        facts = facts_pb2.Snapshot()
        try:
            facts.ParseFromString(vb.kept.get("facts.pb", b""))
        except DecodeError as exc:
            problems.append(f"member facts.pb does not parse as a Snapshot: {exc}")
        if problems:
            self._verification_failed("manifest-mismatch")
            await asyncio.to_thread(staged.abort)
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"bundle {bundle_id} rejected: " + "; ".join(problems))

        if identity.case_token is not None:
            # One use per stored bundle, counted once whatever the number of resumed
            # streams it took; a replay of a stored bundle never gets here.
            try:
                await asyncio.to_thread(self._store.consume_token, identity.case_token.id)
            except AuthError as exc:
                await asyncio.to_thread(staged.abort)
                raise Rejected(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"bundle {bundle_id} not stored: case token {identity.case_token.id} is {exc.reason}",
                ) from None
        blob_key = await asyncio.to_thread(staged.commit)
        ok, skipped, failed = collector_counts(manifest)
        created = _parse_time(manifest.get("created_at"))
        now = dt.datetime.now(dt.UTC)
        record = BundleRecord(
            bundle_id=bundle_id,
            agent_id=identity.agent.id,
            hostname=str(manifest.get("hostname") or facts.host.hostname or "unknown"),
            case_id=manifest.get("case_id") or None,
            kind=str(manifest.get("kind") or "one-shot"),
            created_at_us=int((created or now).timestamp() * 1_000_000),
            received_at_us=int(now.timestamp() * 1_000_000),
            size=header.size,
            sha256=header.sha256,
            key_fingerprint=identity.public_key.fingerprint,
            agent_version=str(manifest.get("agent_version") or ""),
            file_name=_safe_file_name(header.file_name, bundle_id),
            collectors_ok=ok,
            collectors_failed=failed,
            blob_key=blob_key,
            os=facts.host.os_release or facts.host.os,
            origin_fingerprint=vb.public_key.fingerprint,
            collectors_skipped=skipped,
        )
        stored, inserted = await asyncio.to_thread(
            self._store.insert_bundle,
            record,
            facts_pb=vb.kept.get("facts.pb", b""),
            manifest_json=vb.manifest_bytes.decode("utf-8"),
        )
        if inserted and self._metrics is not None:
            self._metrics.ingested_bundles.inc()
        log.info(
            "bundle %s from %s (%s) %s: %d bytes",
            bundle_id,
            stored.hostname,
            stored.agent_id,
            "stored" if inserted else "already stored",
            stored.size,
        )
        request_id = manifest.get("request_id")
        if self._on_stored is not None and isinstance(request_id, str) and request_id:
            try:
                await self._on_stored(stored, request_id)
            except Exception:
                log.exception("live request %s: bundle %s stored, but notifying failed", request_id, bundle_id)
        return receipt_for(stored)


def _require_uses_left(identity: UploadIdentity, bundle_id: str) -> None:
    """Refuse a new bundle under a used-up case token before taking its bytes."""
    token = identity.case_token
    if token is not None and token.max_uses is not None and token.uses >= token.max_uses:
        raise Rejected(
            grpc.StatusCode.UNAUTHENTICATED,
            f"bundle {bundle_id}: case token {token.id} is used up ({token.uses}/{token.max_uses} uploads)",
        )


def _parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def _safe_file_name(name: str, bundle_id: str) -> str:
    return name if _NAME.match(name) and name.endswith(".tar.zst") else f"casefile-{bundle_id}.tar.zst"
