"""The daemon's parking against a real collector on loopback (TLS, ``park_after_s=1``):
when it parks, when it does not, and that it stops promptly while parked. The end-to-end
flows (rung by a snapshot, a collector restart) are in tests/e2e/test_parking.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collector.conftest import RunningCollector
from tests.collector.parking import enrolled_home, parking_server, running, until


@pytest.fixture
def parking_collector(tmp_path: Path) -> Iterator[RunningCollector]:
    yield from parking_server(tmp_path)


def test_an_idle_agent_parks_and_stops_promptly_while_parked(
    parking_collector: RunningCollector, tmp_path: Path
) -> None:
    c = parking_collector
    home, agent_id = enrolled_home(c, tmp_path / "home")
    router = c.server.router

    async def main() -> float:
        async with running(home) as (service, task):
            await until("parked", lambda: agent_id in router.parked() and router.session(agent_id) is None)
            assert service.parking.bell is not None
            t0 = time.monotonic()
            service.stop()
            await asyncio.wait_for(task, 10)
            return time.monotonic() - t0

    assert asyncio.run(main()) < 3.0
    deadline = time.monotonic() + 10
    while agent_id in router.parked() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent_id not in router.parked()  # the doorbell closed with the service


def test_an_agent_told_not_to_park_keeps_its_stream(parking_collector: RunningCollector, tmp_path: Path) -> None:
    c = parking_collector
    home, agent_id = enrolled_home(c, tmp_path / "home")
    router = c.server.router

    async def main() -> None:
        async with running(home, park=False):
            await until("connected", lambda: router.session(agent_id) is not None)
            await asyncio.sleep(2.5)  # the collector offers parking after 1 s
            assert router.session(agent_id) is not None and router.parked() == []

    asyncio.run(main())
    assert c.store.list_audit(10, actor=agent_id, action="channel.park") == []


def test_a_doorbell_that_turns_the_agent_away_leaves_it_on_its_stream(
    parking_collector: RunningCollector, tmp_path: Path
) -> None:
    """Every doorbell connection closed at once (the collector "busy"): the agent stays
    on its stream, reachable, and tries again after the next idle period."""
    c = parking_collector
    assert c.server.doorbell is not None
    c.server.doorbell.max_handshakes = 0
    home, agent_id = enrolled_home(c, tmp_path / "home")
    router = c.server.router

    async def main() -> None:
        async with running(home):
            await until("connected", lambda: router.session(agent_id) is not None)
            await until("two refusals", lambda: c.server.doorbell is not None and c.server.doorbell.busy_refusals >= 2)
            assert router.session(agent_id) is not None and router.parked() == []

    asyncio.run(main())
    assert len(c.store.list_audit(10, actor=agent_id, action="channel.connect", outcome="ok")) == 1
