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
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from agent.bundle import VerifiedBundle
from agent.errors import VerificationError
from collector.edge import Rejected, unary
from collector.metrics import CollectorMetrics
from collector.services.bundle_record import bundle_record, facts_of, receipt_for, stored_or_open
from collector.services.sealed import CollectorRecipient, commit_staged, discard, open_sealed, opens, resent
from collector.services.upload_limits import IngestLimits, UploadSlots, check_header_fields
from collector.services.upload_stream import open_staged, read_header, receive_chunks
from collector.services.verifier import Following, Verifier
from collector.storage import BlobStore, BundleRecord, LiveRequestRecord, Store
from collector.storage.errors import AuthError, Conflict, StagedByOther
from collector.upload_auth import UploadIdentity, authorize_upload
from protos import collector_pb2, collector_pb2_grpc

__all__ = ["IngestLimits", "IngestService", "OnStored", "bundle_record", "receipt_for"]

# Called after a live answer is stored (or found stored) with its record, the manifest's
# request id and the request its transaction moved to ``done`` (None if none: unknown,
# another agent's, final); the live router tells the watchers. Never fails the upload.
OnStored = Callable[[BundleRecord, str, LiveRequestRecord | None], Awaitable[None]]

log = logging.getLogger("casefile.collector.ingest")


@dataclass(frozen=True)
class _Stream:
    """The stream this process runs for a bundle id: who sends which bytes."""

    task: asyncio.Task[Any]
    agent_id: str
    size: int
    sha256: str


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
        # Called with each stored bundle as its receipt goes out; must not block (the
        # collector queues the bundle's analysis for a background worker).
        self.after_receipt: Callable[[BundleRecord], None] = lambda _rec: None
        self._metrics = metrics
        self.verifier = Verifier(self._limits)
        self.sealed: CollectorRecipient | None = None  # opens uploads sealed (age) to this collector
        self._slots = UploadSlots(self._limits.max_uploads_per_identity)
        self.headerless = 0  # streams waiting for their header (event loop only)

    def close(self) -> None:
        """Let the verifier threads go (uploads still running were abandoned by then)."""
        self.verifier.close()

    async def _refused(self, identity: UploadIdentity, reason: str) -> None:
        """An upload failed verification: count it (against a case token too)."""
        if self._metrics is not None:
            self._metrics.verification_failed(reason)
        token = identity.case_token
        if token is None:
            return
        try:
            refused = await asyncio.to_thread(self._store.count_refused_upload, token.id)
        except Exception:
            log.exception("case token %s: an upload was refused (%s) but could not be counted", token.id, reason)
            return
        if refused >= self._limits.max_refused_per_case_token:
            log.warning("case token %s: %d uploads refused; it takes no more uploads", token.id, refused)

    def _authorize(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        bundle_id: str,
        sha256: str,
        size: int,
        proof: collector_pb2.AgentProof,
    ) -> Awaitable[UploadIdentity]:
        return authorize_upload(
            self._store,
            context,
            bundle_id=bundle_id,
            sha256=sha256,
            size=size,
            proof=proof,
            max_refused=self._limits.max_refused_per_case_token,
        )

    async def _header(self, request_iterator: AsyncIterator[collector_pb2.UploadChunk]) -> collector_pb2.UploadHeader:
        """The first message, which must be the header, within ``header_timeout_s``."""
        limits = self._limits
        if self.headerless >= limits.max_headerless_streams:
            raise Rejected(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.headerless} upload streams are waiting for their header; try again shortly",
            )
        self.headerless += 1
        try:
            return await read_header(request_iterator, limits.header_timeout_s)
        finally:
            self.headerless -= 1

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
        check_header_fields(request.bundle_id, request.size, request.sha256, self._limits)
        identity = await self._authorize(context, request.bundle_id, request.sha256, request.size, request.proof)
        rec = await stored_or_open(self._store, request.bundle_id, request.sha256, identity, opens(self.sealed))
        if rec is not None:
            return collector_pb2.UploadState(committed_offset=rec.size, complete=True, receipt=receipt_for(rec))
        offset = await asyncio.to_thread(
            functools.partial(
                self._blobs.staged_offset, request.bundle_id, request.size, request.sha256, owner=identity.agent.id
            )
        )
        return collector_pb2.UploadState(committed_offset=offset)

    @unary
    async def Upload(
        self,
        request_iterator: AsyncIterator[collector_pb2.UploadChunk],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> collector_pb2.Receipt:
        header = await self._header(request_iterator)
        check_header_fields(header.bundle_id, header.size, header.sha256, self._limits)
        identity = await self._authorize(context, header.bundle_id, header.sha256, header.size, header.proof)
        sealed = opens(self.sealed, header.file_name)  # then _commit opens it and compares
        existing = await stored_or_open(self._store, header.bundle_id, header.sha256, identity, sealed)
        if existing is not None:
            return receipt_for(existing)  # idempotent: same id, same bytes, same receipt
        self._slots.take(identity, header.bundle_id)
        try:
            staged = await self._take_staging(header, identity)
        except BaseException:
            self._slots.release(identity, header.bundle_id)
            raise
        this = asyncio.current_task()
        if this is not None:
            self._active[header.bundle_id] = _Stream(this, identity.agent.id, header.size, header.sha256)
        resumed_at = staged.offset
        handed_over = False
        following: Following | None = None
        if self._metrics is not None:
            self._metrics.uploads_in_flight.inc()
        try:
            if header.offset != staged.offset:
                raise Rejected(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"bundle {header.bundle_id}: stream starts at byte {header.offset} but the "
                    f"collector holds {staged.offset}; ask GetUploadState and resume from there",
                )
            following = self.verifier.follow(staged, identity.bundle_key, header.size)
            await receive_chunks(request_iterator, staged, header, following[0] if following else None, self._limits)
            if staged.sha256_hex() != header.sha256:
                actual = staged.sha256_hex()
                await self._refused(identity, "sha256-mismatch")
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
            # The identity's slot is held until the commit ends, not until this client
            # leaves: hanging up after the last byte must not free it for the next bomb.
            committer.add_done_callback(lambda _: self._slots.release(identity, header.bundle_id))
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
                self._slots.release(identity, header.bundle_id)
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
                return await open_staged(self._blobs, header, identity.agent.id)
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

    async def _commit(
        self,
        staged: Any,
        header: collector_pb2.UploadHeader,
        identity: UploadIdentity,
        verified: asyncio.Future[VerifiedBundle] | None,
    ) -> collector_pb2.Receipt:
        bundle_id = header.bundle_id
        opened = None
        try:
            opened = await open_sealed(staged.path, self.sealed, bundle_id, self._blobs)
            if again := await resent(self._store, staged, opened, header.sha256, identity):
                return receipt_for(again)  # the same bundle again (sealed anew, say): nothing stored twice
            if opened is not None:  # sealed: the bundle inside is verified, then stored
                vb: VerifiedBundle = await self.verifier.check(opened.path, identity.bundle_key, opened.size, bundle_id)
            elif verified is not None:
                vb = await verified
            else:
                vb = await self.verifier.check(staged.path, identity.bundle_key, header.size, bundle_id)
        except Exception as exc:
            discard(opened)
            if not (isinstance(exc, Rejected) and exc.code is grpc.StatusCode.ALREADY_EXISTS):  # not a resend
                await self._refused(identity, exc.reason if isinstance(exc, VerificationError) else "unreadable")
            await asyncio.to_thread(staged.abort)
            raise
        manifest = vb.manifest
        problems = []
        if manifest.bundle_id != bundle_id:
            problems.append(f"manifest bundle_id {manifest.bundle_id!r} != header {bundle_id}")
        if identity.case_token is None and manifest.agent_id not in ("", identity.agent.id):
            problems.append(f"manifest agent_id {manifest.agent_id!r} != uploader {identity.agent.id}")
        if identity.case_token is not None and manifest.case_id != identity.case_token.case_id:
            problems.append(
                f"manifest case_id {manifest.case_id!r} is not the token's case {identity.case_token.case_id!r}"
            )
        facts, facts_problems = facts_of(vb)
        problems += facts_problems
        if problems:
            discard(opened)
            await self._refused(identity, "manifest-mismatch")
            await asyncio.to_thread(staged.abort)
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"bundle {bundle_id} rejected: " + "; ".join(problems))

        if identity.case_token is not None:
            # One use per stored bundle, counted once whatever the number of resumed
            # streams it took; a replay of a stored bundle never gets here.
            try:
                await asyncio.to_thread(self._store.consume_token, identity.case_token.id)
            except AuthError as exc:
                discard(opened)
                await asyncio.to_thread(staged.abort)
                raise Rejected(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"bundle {bundle_id} not stored: case token {identity.case_token.id} is {exc.reason}",
                ) from None
        request_id = (manifest.request_id or "") if self._on_stored is not None else ""
        def store_it() -> tuple[BundleRecord, bool, LiveRequestRecord | None]:
            # The blob, then its row and the live request it answers, in one thread hop.
            blob_key, size, sha256 = commit_staged(staged, opened, self._blobs)
            record = bundle_record(
                vb,
                facts,
                bundle_id=bundle_id,
                agent_id=identity.agent.id,
                case_id=manifest.case_id or None,
                size=size,
                sha256=sha256,
                key_fingerprint=identity.public_key.fingerprint,
                file_name=header.file_name,
                blob_key=blob_key,
            )
            return self._store.insert_bundle_answering(
                record,
                facts_pb=vb.kept.get("facts.pb", b""),
                manifest_json=vb.manifest_bytes.decode("utf-8"),
                request_id=request_id,
            )

        stored, inserted, answered = await asyncio.to_thread(store_it)
        if stored.agent_id != identity.agent.id:
            # Only another agent's bundle of the same bytes could land here, which its
            # signature rules out; still, its receipt is never this uploader's answer.
            raise Rejected(grpc.StatusCode.ALREADY_EXISTS, f"bundle {bundle_id}: this bundle id is taken")
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
        if self._on_stored is not None and request_id:
            try:
                await self._on_stored(stored, request_id, answered)
            except Exception:
                log.exception("live request %s: bundle %s stored, but notifying failed", request_id, bundle_id)
        self.after_receipt(stored)
        return receipt_for(stored)
