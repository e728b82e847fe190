"""What the Channel writes when agents come and go, committed in groups.

Each accepted stream records that its agent was seen (``last_seen_at``) and one
``channel.connect`` audit row; each ended stream records the agent seen again. After a
collector restart thousands of agents reconnect within seconds, and one transaction per
write (each an fsync on SQLite with ``synchronous=FULL``) queued them for longer than an
agent waits for its handshake (``benchmarks/bench_storm.py``). Here every caller still
awaits its own write being committed before its stream is accepted, but the writes that
arrive while one transaction is being committed go together into the next
(``Store.seen_and_audited``): one commit for many agents under load, one for one at rest.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

from collector.storage import Store

__all__ = ["ChannelLog", "agent_entry"]

# One transaction's worth at most; the rest wait for the next.
MAX_BATCH = 500


def agent_entry(agent_id: str, peer: str, outcome: str, detail: str, action: str = "channel.connect") -> dict[str, Any]:
    """One audit row of an agent's own action (``Store.audit``'s arguments): a Channel's
    connect or replace, a doorbell's park."""
    return {
        "actor": agent_id,
        "role": "agent",
        "action": action,
        "target": agent_id,
        "peer": peer,
        "outcome": outcome,
        "detail": detail,
    }


class ChannelLog:
    """Group commit of ``last_seen_at`` updates and audit rows, on ``executor``."""

    __slots__ = ("_executor", "_flusher", "_pending", "_store", "batches")

    def __init__(self, store: Store, executor: Executor) -> None:
        self._store = store
        self._executor = executor
        self._pending: list[
            tuple[str | None, dict[str, Any] | None, dict[str, Any] | None, asyncio.Future[None]]
        ] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed (for tests and benchmarks)

    async def record(
        self, seen: str | None = None, audit: dict[str, Any] | None = None, policy: dict[str, Any] | None = None
    ) -> None:
        """Agent ``seen`` now (with the live ``policy`` it reported, if any) and/or one audit row
        (``Store.audit``'s arguments); returns once committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((seen, audit, policy, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await done

    async def wait_flushed(self, timeout_s: float) -> None:
        """Let the writes queued so far be committed (bounded): the server is stopping."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait({self._flusher}, timeout=timeout_s)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            seen = [s for s, _a, _p, _f in batch if s is not None]
            rows = [a for _s, a, _p, _f in batch if a is not None]
            policies = {s: p for s, _a, p, _f in batch if s is not None and p is not None}
            try:
                await loop.run_in_executor(self._executor, self._store.seen_and_audited, seen, rows, policies)
            except Exception as exc:
                for *_x, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                self.batches += 1
                for *_x, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
