"""Giving back the heap that a burst of closed Channels leaves behind (glibc).

When agents park, thousands of Channel streams close within seconds. grpc-core and Python
free their buffers, but glibc keeps most of the freed heap for later: after 2,000 agents
parked, 44 MiB of it (22 KiB per agent, as much as a parked agent's own state), which
``malloc_trim(0)`` gave back (benchmarks/README.md). The trimmer calls it once such a
burst is over: at least ``min_closed`` streams closed since the last trim, and none for
``quiet_s`` (or, under steady churn, ``max_wait_s`` after the last trim). A trim walks
the free heap (milliseconds) in a thread; where there is no ``malloc_trim`` (macOS, musl)
nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable

__all__ = ["HeapTrimmer", "libc_trim"]

log = logging.getLogger("casefile.collector.memory")


def libc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none. Looked up among the
    symbols this process already has (``find_library`` would run ldconfig or a compiler)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        log.info("this C library has no malloc_trim: heap freed by closed Channels is kept for reuse")
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    """Counts closed streams (``closed``, event loop only) and trims after a burst (``run``)."""

    def __init__(
        self,
        trim: Callable[[], object] | None,
        *,
        min_closed: int = 256,
        quiet_s: float = 5.0,
        max_wait_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._trim = trim
        self._min_closed = min_closed
        self._quiet_s = max(quiet_s, 0.01)
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._pending = 0
        self._last_close = 0.0
        self._last_trim = clock()
        self.trims = 0

    def closed(self, n: int = 1) -> None:
        self._pending += n
        self._last_close = self._clock()

    def due(self) -> bool:
        if self._trim is None or self._pending < self._min_closed:
            return False
        now = self._clock()
        return now - self._last_close >= self._quiet_s or now - self._last_trim >= self._max_wait_s

    async def trim_if_due(self) -> bool:
        if not self.due() or self._trim is None:
            return False
        closed, self._pending = self._pending, 0
        self._last_trim = self._clock()
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._trim)
        except Exception as exc:  # advice to the allocator: never worth failing for
            log.debug("heap trim failed: %s", exc)
            return False
        self.trims += 1
        log.debug("heap trimmed after %d streams closed (%.1f ms)", closed, (time.perf_counter() - started) * 1e3)
        return True

    async def run(self) -> None:
        """Check every ``quiet_s`` seconds until cancelled."""
        if self._trim is None:
            return
        while True:
            await asyncio.sleep(self._quiet_s)
            await self.trim_if_due()
