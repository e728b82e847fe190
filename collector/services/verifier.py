"""Bundle verification for ingest, on threads of its own.

Verification is the costly part of an upload: decompress, hash, check the signature.
It never runs in the event loop's default executor, which every database call goes
through: eight decompression bombs there once held all six of its threads for a
minute, and ``ListHosts`` timed out behind them. Two small pools instead:

* followers verify a big upload while it arrives (one thread per upload, waiting on
  the network most of the time), at most ``stream_verify_workers`` at once;
* checks verify the rest after their last byte, in ``verify_workers`` worker
  processes; more wait their turn. A process, not a thread: decompressing and hashing
  a bomb in a thread held the interpreter lock a third of the time, and the event
  loop waited for it (ListHosts p50 3 ms idle, 19 ms during eight bombs; see
  benchmarks/bench_bombs.py).

Both run at a lower priority (``verify_nice``; followers where the OS keeps one per
thread), except one follower, the lead, at the collector's own: a big upload's receipt
waits for its verifier, and a nicer one fell behind while the stream took the CPU, then
held the receipt up to 170 ms after the last byte of a 128 MiB upload (median ~25 ms;
benchmarks/README.md). One thread at normal priority still leaves the event loop a core
of its own on two. Every read is bounded by the bundle's compressed size
(``agent.bundle.source``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import IO, Any, cast

import grpc

from agent.bundle import VerifiedBundle, verify_bundle
from agent.bundle.outcome import verify_outcome
from agent.bundle.reader import ReadMeter
from agent.keys import PublicKey
from collector.edge import Rejected
from collector.services.upload_limits import IngestLimits

__all__ = ["Abandoned", "Following", "StagedTail", "Verifier"]

log = logging.getLogger("casefile.collector.ingest")


class Abandoned(Exception):
    """The upload stopped before its last byte; the verifier following it gives up."""


class StagedTail:
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
                raise Abandoned()
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


Following = tuple[StagedTail, "asyncio.Future[VerifiedBundle]"]


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark an outcome nobody may await (an abandoned verifier) as seen."""
    if not fut.cancelled():
        fut.exception()


def _warmed(fut: concurrent.futures.Future[int]) -> None:
    """Say why the verifier process did not start with the server. The first upload then finds
    the pool broken and is refused UNAVAILABLE (its agent retries); the next starts a new one."""
    if not fut.cancelled() and (exc := fut.exception()) is not None:
        log.warning("the verifier process did not start with the server (%s: %s); the first upload will be "
                    "refused and a new one started", type(exc).__name__, exc)


def _lower_priority(nice: int) -> None:
    """Make the calling worker thread nicer (Linux keeps a nice value per thread)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


class Verifier:
    """Runs ``verify_bundle`` for ingest on its own bounded, lower-priority threads."""

    def __init__(self, limits: IngestLimits) -> None:
        self._limits = limits
        self._followers: ThreadPoolExecutor | None = None
        self._lead: ThreadPoolExecutor | None = None  # one follower at the collector's priority
        self._lead_busy = False  # (event loop only)
        self._checks: ProcessPoolExecutor | None = None
        self.following = 0  # follower threads busy (event loop only)
        self._lock = threading.Lock()
        # Every verification's decompressed bytes, refused ones included: what uploads
        # cost the collector, for operators (and tests) to see.
        self.decompressed_bytes = 0
        self.compressed_bytes = 0

    @property
    def started_followers(self) -> bool:
        return self._followers is not None or self._lead is not None

    def close(self) -> None:
        """Let the verifier threads go (uploads still running were abandoned by then)."""
        for pool in (self._followers, self._lead):
            if pool is not None:
                # Queued verifiers still run: their uploads were abandoned, so they end at once.
                pool.shutdown(wait=False)
        if self._checks is not None:
            self._checks.shutdown(wait=False, cancel_futures=True)
        self._followers = self._lead = self._checks = None

    def _pool(self, workers: int, name: str) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            workers, thread_name_prefix=name, initializer=_lower_priority, initargs=(self._limits.verify_nice,)
        )

    def _verify(self, source: Path | IO[bytes], key: PublicKey | None, size: int, label: str) -> VerifiedBundle:
        limits = self._limits
        meter = ReadMeter()
        try:
            return verify_bundle(
                source,
                expected_key=key,
                keep=("facts.pb",),
                compressed_size=size,
                max_total_bytes=limits.max_decompressed_bytes,
                max_ratio=limits.max_compression_ratio,
                ratio_floor=limits.ratio_floor_bytes,
                meter=meter,
            )
        except Exception as exc:
            log.info("bundle %s refused after %d bytes decompressed: %s", label, meter.decompressed, exc)
            raise
        finally:
            with self._lock:
                self.decompressed_bytes += meter.decompressed
                self.compressed_bytes += meter.compressed

    def follow(self, staged: Any, key: PublicKey | None, size: int) -> Following | None:
        """Start verifying this upload while it arrives, if it is big enough and a worker is free."""
        limits = self._limits
        if size < limits.stream_verify_min_bytes or self.following >= limits.stream_verify_workers:
            return None
        try:
            tail = StagedTail(staged.path, staged.offset)
        except OSError as exc:  # out of descriptors, say: verify after the last byte instead
            log.warning("bundle %s: verifying after receipt, not while receiving: %s", staged.bundle_id, exc)
            return None
        loop = asyncio.get_running_loop()
        lead = not self._lead_busy
        if lead:
            if self._lead is None:
                self._lead = ThreadPoolExecutor(1, thread_name_prefix="casefile-verify-lead")
            pool, self._lead_busy = self._lead, True
        else:
            if self._followers is None:
                self._followers = self._pool(limits.stream_verify_workers - 1, "casefile-verify-follow")
            pool = self._followers
        self.following += 1

        def run() -> VerifiedBundle:
            return self._verify(cast(IO[bytes], tail), key, size, staged.bundle_id)

        def done(job: concurrent.futures.Future[VerifiedBundle]) -> None:
            # The job, not the awaiting future, holds the slot: counted down once its thread
            # is done with it, or at once if it was cancelled before a thread took it.
            tail.close()
            with contextlib.suppress(RuntimeError):  # the loop is gone at shutdown
                loop.call_soon_threadsafe(self._follower_done, lead)

        try:
            job = pool.submit(run)
        except RuntimeError:  # the pool was shut down (the collector is stopping)
            tail.close()
            self._follower_done(lead)
            return None
        job.add_done_callback(done)
        fut = asyncio.wrap_future(job, loop=loop)
        fut.add_done_callback(_retrieve)
        return tail, fut

    def _follower_done(self, lead: bool) -> None:
        self.following -= 1
        if lead:
            self._lead_busy = False

    def _check_pool(self) -> ProcessPoolExecutor:
        if self._checks is None:
            # spawn, not fork: a forked copy of a process running grpc threads is not safe.
            self._checks = ProcessPoolExecutor(
                self._limits.verify_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_verifier_process_init,
                initargs=(self._limits.verify_nice, os.getpid()),
            )
        return self._checks

    def warm(self) -> None:
        """Start the verifier processes now, in the background, so that the first upload
        after a start does not wait ~1 s for an interpreter to start and import."""
        self._check_pool().submit(os.getpid).add_done_callback(_warmed)

    async def check(self, path: Path, key: PublicKey | None, size: int, label: str) -> VerifiedBundle:
        """Verify a staged file whose every byte is here, in a worker process (waits for a free one).

        ``key`` None checks the signature against the bundle's own key (a bundle brought
        by hand, whose signer is matched to an enrolled agent afterwards)."""
        limits = self._limits
        checks = self._check_pool()
        run = functools.partial(
            verify_outcome,
            str(path),
            expected_key=key,
            keep=("facts.pb",),
            compressed_size=size,
            max_total_bytes=limits.max_decompressed_bytes,
            max_ratio=limits.max_compression_ratio,
            ratio_floor=limits.ratio_floor_bytes,
        )
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(checks, run)
        except BrokenProcessPool:
            self._checks = None  # a worker died (killed, out of memory): the next check starts new ones
            raise Rejected(
                grpc.StatusCode.UNAVAILABLE,
                f"bundle {label}: the verifier process died; the partial was discarded, upload again",
            ) from None
        with self._lock:
            self.decompressed_bytes += outcome.decompressed
            self.compressed_bytes += outcome.compressed
        if outcome.refusal is not None:
            log.info(
                "bundle %s refused after %d bytes decompressed: %s", label, outcome.decompressed, outcome.refusal[0]
            )
        return outcome.result()


def _verifier_process_init(nice: int, parent: int | None = None) -> None:
    """Runs first in each verifier process: nicer than the collector (the whole process,
    no lock to share), and gone when the collector is. A worker blocks on a queue whose
    write end it holds itself, so a collector killed outright (SIGKILL, the OOM killer)
    would otherwise leave it behind for ever. ``parent``: the collector's pid, given when
    the process may still be starting as the collector dies (then its parent is already
    another process, which ``getppid`` alone would take for the collector)."""
    if nice > 0:
        with contextlib.suppress(OSError):
            os.nice(nice)
    if parent is None:
        parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="casefile-verify-parent", daemon=True).start()
