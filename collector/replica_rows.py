"""The writes of one replica's rows of ``agent_channels`` or ``agent_doorbells``, grouped.

``collector.live_pg.PgLiveRouter`` holds one writer per table: the agents' streams
(``Store.write_channels``) and their doorbells (``Store.write_doorbells``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from collector.storage.live import ChannelHolder

__all__ = ["ReplicaRows", "WriteRows"]

log = logging.getLogger("casefile.collector.live_pg")

# ``Store.write_channels`` or ``Store.write_doorbells`` for one replica: (replica id, changes)
# → per change, None or the live holder that refused the claim.
WriteRows = Callable[[str, list[tuple[str, str | None]]], list[ChannelHolder | None]]


class ReplicaRows:
    """The writes of this replica's rows of one table (``agent_channels`` or
    ``agent_doorbells``), off the event loop and grouped.

    A claim (an agent connected, or parked) and a release (it left) are queued here in the
    order they happen and written by one thread of their own, in order: the changes queued
    while one transaction is being committed go together into the next (``write``), so a
    reconnect storm's thousands of connects cost a few commits a second, not one each, and no
    handler waits on the database with the event loop. A claim's caller awaits its commit
    (a refusal must come before the stream is accepted); a release's does not. Order is what
    keeps the rows right: an agent that leaves and comes back has its release written
    before its new claim, never after.
    """

    def __init__(self, write: WriteRows, replica_id: str, what: str = "channel", max_batch: int = 1000) -> None:
        self._write = write
        self.replica_id = replica_id
        self._what = what
        self._max = max_batch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{what}-rows")
        self._pending: list[tuple[str, str | None, asyncio.Future[ChannelHolder | None] | None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0  # transactions committed (for tests and benchmarks)
        self.changes = 0

    def _queue(self, agent_id: str, peer: str | None, done: asyncio.Future[ChannelHolder | None] | None) -> None:
        self._pending.append((agent_id, peer, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name=f"{self._what}-rows")

    async def change(self, agent_id: str, peer: str) -> ChannelHolder | None:
        """Claim the agent's row for this replica; ``None`` once committed, or the live
        replica holding it (the row is then left alone)."""
        if self._closed:
            raise RuntimeError(f"replica {self.replica_id} is stopping: no new {self._what} rows")
        done: asyncio.Future[ChannelHolder | None] = asyncio.get_running_loop().create_future()
        self._queue(agent_id, peer, done)
        return await done

    def release(self, agent_id: str) -> None:
        """Delete the agent's row if this replica holds it; queued, not awaited. Once
        stopped, nothing: the replica's rows are all deleted as it stops (``forget_replica``)."""
        if not self._closed:
            self._queue(agent_id, None, None)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            changes = [(a, p) for a, p, _f in batch]
            try:
                holders = await loop.run_in_executor(self._pool, self._write, self.replica_id, changes)
            except Exception as exc:
                released = sum(1 for _a, p, _f in batch if p is None)
                if released:
                    log.warning("could not release %d %s row(s) (%s); the next claims take them over",
                                released, self._what, exc)
                for _a, _p, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.changes += len(batch)
            for (_a, _p, fut), holder in zip(batch, holders, strict=True):
                if fut is not None and not fut.done():
                    fut.set_result(holder)

    async def aclose(self, timeout_s: float) -> None:
        """Let the changes queued so far be written (bounded), then stop the thread."""
        self._closed = True
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.wait({self._flusher}, timeout=timeout_s)
        self._pool.shutdown(wait=False)
