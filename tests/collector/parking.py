"""What the parking tests share: a collector that offers parking after 1 s, an agent home
enrolled with it, and the agent's own service run in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from agent.daemon import AgentService, DaemonOptions
from agent.state import AgentHome, Enrollment
from agent.transport import enroll
from collector.server import ServerConfig
from tests.collector.conftest import RunningCollector, _run_server

__all__ = ["enrolled_home", "parking_server", "running", "until"]


def parking_server(tmp_path: Path) -> Iterator[RunningCollector]:
    """A TLS collector on loopback offering parking after 1 s idle (a fixture's body)."""
    yield from _run_server(ServerConfig(address="127.0.0.1:0", data_dir=tmp_path / "collector", park_after_s=1))


def enrolled_home(c: RunningCollector, root: Path, hostname: str = "parker") -> tuple[AgentHome, str]:
    home = AgentHome(root)
    key = home.key()
    with c.channel() as ch:
        agent_id = enroll(ch, token=c.enroll_token(), key=key, hostname=hostname, agent_version="t").agent_id
    home.save_enrollment(Enrollment(agent_id, c.address, c.fingerprint, key.fingerprint))
    return home, agent_id


async def until(what: str, check: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(home: AgentHome, **options: Any) -> AsyncIterator[tuple[AgentService, asyncio.Task[None]]]:
    """The agent's service in this loop (short backoff, no lingering child), stopped after."""
    base: dict[str, Any] = {"backoff_base_s": 0.05, "backoff_cap_s": 0.2, "worker_linger_s": 0.0}
    service = AgentService(home, DaemonOptions(**(base | options)))
    task = asyncio.create_task(service.run())
    try:
        yield service, task
    finally:
        service.stop()
        await asyncio.wait_for(task, 15)
