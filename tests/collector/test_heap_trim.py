"""The collector gives back the heap a burst of closed Channels leaves behind: once the
burst is over, not during it, and never for a handful of streams."""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.heap_trim import HeapTrimmer, libc_trim
from tests.collector.conftest import RunningCollector
from tests.collector.parking import enrolled_home, parking_server, running, until


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_trimmed_once_it_is_over() -> None:
    calls: list[int] = []
    clock = _Clock()
    trimmer = HeapTrimmer(lambda: calls.append(1), min_closed=100, quiet_s=5.0, clock=clock)

    async def main() -> None:
        trimmer.closed(99)
        clock.now += 60
        assert not await trimmer.trim_if_due()  # a handful of streams: not worth a walk of the heap
        trimmer.closed(1)  # the burst goes on
        clock.now += 4.9
        assert not await trimmer.trim_if_due()
        clock.now += 0.2  # quiet for 5 s
        assert await trimmer.trim_if_due()
        assert calls == [1] and trimmer.trims == 1
        clock.now += 60
        assert not await trimmer.trim_if_due()  # nothing closed since
        trimmer.closed(250)
        clock.now += 5
        assert await trimmer.trim_if_due()
        assert calls == [1, 1]

    asyncio.run(main())


def test_steady_churn_is_trimmed_every_max_wait() -> None:
    """Closes that never pause for ``quiet_s`` (agents leaving all day) still get a trim
    every ``max_wait_s``."""
    calls: list[int] = []
    clock = _Clock()
    trimmer = HeapTrimmer(lambda: calls.append(1), min_closed=10, quiet_s=5.0, max_wait_s=600, clock=clock)

    async def main() -> None:
        for _ in range(200):  # one close every 4 s for 800 s
            trimmer.closed()
            clock.now += 4
            await trimmer.trim_if_due()

    asyncio.run(main())
    assert len(calls) == 1


def test_a_failing_trim_is_only_advice() -> None:
    def broken() -> None:
        raise OSError("no")

    clock = _Clock()
    trimmer = HeapTrimmer(broken, min_closed=1, quiet_s=1.0, clock=clock)
    trimmer.closed()
    clock.now += 2
    assert not asyncio.run(trimmer.trim_if_due())
    assert trimmer.trims == 0 and not trimmer.due()  # counted as tried: not retried at once


def test_without_malloc_trim_nothing_is_done() -> None:
    trimmer = HeapTrimmer(None, min_closed=1, quiet_s=0.01)
    trimmer.closed(10_000)
    assert not trimmer.due()
    asyncio.run(asyncio.wait_for(trimmer.run(), 1))  # returns at once


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibcs_malloc_trim_is_found_and_runs() -> None:
    trim = libc_trim()
    assert trim is not None
    assert trim() in (0, 1)  # 1: memory was given back


@pytest.fixture
def parking_collector(tmp_path: Path) -> Iterator[RunningCollector]:
    yield from parking_server(tmp_path)


def test_a_channel_closed_by_parking_is_counted(parking_collector: RunningCollector, tmp_path: Path) -> None:
    """A real agent parks (its Channel ends): the running collector's trimmer counts it."""
    c = parking_collector
    home, agent_id = enrolled_home(c, tmp_path / "agent")
    before = c.server.trimmer._pending

    async def main() -> None:
        async with running(home):
            await until("the agent parked", lambda: agent_id in c.server.router.parked())
            await until("its Channel counted", lambda: c.server.trimmer._pending > before)
            assert c.server._trimming is not None and not c.server._trimming.done()  # its task runs

    asyncio.run(main())
