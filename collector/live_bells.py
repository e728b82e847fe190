"""Parked agents on the live router: agent id → its doorbell, and paced rings.

A mixin of ``collector.live_router.LiveRouter`` (and so of ``collector.live_pg.PgLiveRouter``,
which adds the replicas' rows): the bells ``collector.doorbell`` parks, the agents among
them counted online, and ringing them so that a request reaches one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["RING_SLOT_S", "RING_WINDOW", "ParkedAgents"]

# Parked agents rung and not yet back on their stream, at most (``ParkedAgents.ring``), and how
# long one keeps its slot if it never comes back (a doorbell that died unnoticed). 8: a hunt
# over 1,000 parked agents kept the engineers' ListHosts p99 at 84-129 ms (no pacing: 336-507;
# 64: 202-262; 16: 97-145) in about the same time, 10.5-11.8 s (benchmarks/bench_hunt.py --park).
RING_WINDOW = 8
RING_SLOT_S = 5.0


class ParkedAgents:
    """Bells have ``agent_id``, ``peer``, ``rung``, ``ring()`` and ``close()`` (``collector.doorbell.Bell``)."""

    def __init__(self) -> None:
        self._bells: dict[str, Any] = {}  # agent id → its bell
        self.ring_window = RING_WINDOW
        self._ringing: dict[Any, float] = {}  # bells rung, not closed yet → when (monotonic)
        self._to_ring: dict[Any, None] = {}  # bells waiting for a ring slot, in order
        self._pump_later: asyncio.TimerHandle | None = None

    async def park(self, agent_id: str, bell: Any) -> None:
        """The agent proved its key on ``bell`` and is parked here (online, reached by a
        ring). A newer bell of the same agent replaces an older one, which is closed: the
        agent dialled again because its old connection died unnoticed."""
        old = self._bells.get(agent_id)
        self._bells[agent_id] = bell
        if old is not None and old is not bell:
            old.close()

    def unpark(self, agent_id: str, bell: Any) -> bool:
        """``bell`` closed; True if it was the agent's current one."""
        self._rung_back(bell)
        if self._bells.get(agent_id) is bell:
            del self._bells[agent_id]
            return True
        return False

    def ring(self, agent_id: str) -> bool:
        """Ring the agent's bell if it is parked here; the Channel it opens drains its queue.

        Paced: at most ``ring_window`` agents rung and not yet back (their bell not closed,
        for ``RING_SLOT_S`` at most); the others wait their turn in order. A hunt rings
        hundreds at once, and their reconnections (TLS, the Channel's handshake, its store
        reads) would otherwise all queue in front of the engineers' queries."""
        bell = self._bells.get(agent_id)
        if bell is None:
            return False
        if not (bell.rung or bell in self._ringing or bell in self._to_ring):
            self._to_ring[bell] = None
            self._pump()
        return True

    def _pump(self) -> None:
        now = time.monotonic()
        for late in [b for b, t in self._ringing.items() if now - t > RING_SLOT_S]:
            del self._ringing[late]
        while self._to_ring and len(self._ringing) < self.ring_window:
            waiting = next(iter(self._to_ring))
            del self._to_ring[waiting]
            current = self._bells.get(waiting.agent_id)
            if current is None or current is not waiting:  # gone, or replaced meanwhile
                continue
            current.ring()
            self._ringing[current] = now
        if self._to_ring and self._pump_later is None:
            def again() -> None:
                self._pump_later = None
                self._pump()

            self._pump_later = asyncio.get_running_loop().call_later(1.0, again)

    def _rung_back(self, bell: Any) -> None:
        """``bell`` closed: its ring slot (if any) goes to the next in line."""
        self._to_ring.pop(bell, None)
        if self._ringing.pop(bell, None) is not None and self._to_ring:
            self._pump()

    def bell(self, agent_id: str) -> Any:
        return self._bells.get(agent_id)

    def bells(self) -> list[Any]:
        return list(self._bells.values())

    def parked(self) -> list[str]:
        return list(self._bells)
