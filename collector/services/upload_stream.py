"""Receiving one upload's bytes: its header, its staged partial, and the data messages
of the stream appended to it, made durable as they go (``collector.services.ingest``
runs the RPC around these)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from collector.edge import Rejected
from collector.services.upload_limits import IngestLimits
from collector.services.verifier import StagedTail
from collector.storage import BlobBackend
from protos import collector_pb2

__all__ = ["open_staged", "read_header", "receive_chunks"]

log = logging.getLogger("casefile.collector.ingest")


async def receive_chunks(
    request_iterator: AsyncIterator[collector_pb2.UploadChunk],
    staged: Any,
    header: collector_pb2.UploadHeader,
    tail: StagedTail | None,
    limits: IngestLimits,
) -> None:
    """Append the stream's data messages to ``staged`` until it ends, fsyncing every
    ``sync_every_bytes`` in a thread; refuse a second header, an oversized chunk, data
    past the declared size, silence longer than ``idle_timeout_s`` and a short stream."""
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
            data = msg.data  # each read of a bytes field copies it (upb): read it once
            n = len(data)
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
            staged.append(data, autosync=False)
            if tail is not None:
                tail.publish(staged.offset, data)
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
        if failed is None and staged.offset < staged.size:
            # A stream that ended short: what it sent becomes the durable resume point
            # before this handler lets go, on the event loop, so a GetUploadState that
            # follows the cut already reads it (in a thread, it read the older record). Rare:
            # a whole bundle needs none, its commit fsyncs it before storing, and until then
            # the partial's record names fewer bytes, never more.
            try:
                staged.sync()
            except OSError as exc:
                failed = exc
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


async def read_header(
    request_iterator: AsyncIterator[collector_pb2.UploadChunk], timeout_s: float
) -> collector_pb2.UploadHeader:
    """The stream's first message, which must be the header, within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            first = await anext(aiter(request_iterator), None)
    except TimeoutError:
        raise Rejected(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"malformed upload: no header within {timeout_s:g} s of the stream opening "
            "(the header must be the first message)",
        ) from None
    if first is None or first.WhichOneof("part") != "header":
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed upload: the first message must be the header",
        )
    return first.header


async def open_staged(blobs: BlobBackend, header: collector_pb2.UploadHeader, owner: str) -> Any:
    """open_upload in a thread, without leaking its lock if this stream is cancelled
    while the thread runs (the thread finishes anyway: whatever it took is closed)."""
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(
        None,
        functools.partial(blobs.open_upload, header.bundle_id, header.size, header.sha256, owner=owner),
    )
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:

        def release(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                done.result().close()

        fut.add_done_callback(release)
        raise
