"""Parked agents across two collector replicas sharing PostgreSQL.

Two real collectors (TLS, ``park_after_s=1``) in this process on one fresh database and
one data folder, and a real ``AgentService`` enrolled with replica r1: its stream goes
idle and it parks on r1's doorbell (its row in ``agent_doorbells`` names r1). An engineer
asks replica r2: r2 counts the agent online through that row, writes the request and its
NOTIFY; r1, which holds the doorbell, rings; the agent opens its Channel again (to r1),
collects and uploads, and r2 streams ``done`` back. r1 stopping deletes its doorbell rows.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from agent.transport.live_states import LiveState
from collector.server import ServerConfig
from collector.storage import Store
from collector.storage.doorbells_schema import agent_doorbells
from collector.storage.live import collector_replicas, live_requests
from protos import collector_pb2, collector_pb2_grpc
from tests.collector.conftest import RunningCollector, _run_server
from tests.collector.test_channel import _Daemon, _enrolled, _wait

pytestmark = pytest.mark.postgres


@dataclass
class Replicas:
    """The running replicas by name; :meth:`stop` runs one's shutdown (a test may stop r1 early)."""

    running: dict[str, RunningCollector] = field(default_factory=dict)
    _gens: dict[str, Generator[RunningCollector, None, None]] = field(default_factory=dict)

    def start(self, config: ServerConfig) -> None:
        assert config.replica_id is not None
        gen = _run_server(config)
        assert isinstance(gen, Generator)
        self.running[config.replica_id] = next(gen)
        self._gens[config.replica_id] = gen

    def stop(self, name: str) -> None:
        gen = self._gens.pop(name, None)
        if gen is not None:
            gen.close()  # the server's stop, in _run_server's finally

    @property
    def r1(self) -> RunningCollector:
        return self.running["r1"]

    @property
    def r2(self) -> RunningCollector:
        return self.running["r2"]


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[Replicas]:
    """r1 then r2 (r1 makes the shared certificate and migrates), both parking idle agents after 1 s."""
    pair = Replicas()
    try:
        for name in ("r1", "r2"):
            pair.start(ServerConfig(
                address="127.0.0.1:0", data_dir=tmp_path / "shared", db_url=postgres_url, replica_id=name,
                park_after_s=1,
            ))  # fmt: skip
        yield pair
    finally:
        pair.stop("r2")
        pair.stop("r1")


def _doorbells(store: Store) -> dict[str, str]:
    d = agent_doorbells.c
    with store._read() as conn:
        return {r.agent_id: r.replica_id for r in conn.execute(select(d.agent_id, d.replica_id))}


def _on_loop(r: RunningCollector, coro: Any) -> Any:
    assert r.server.loop is not None
    return asyncio.run_coroutine_threadsafe(coro, r.server.loop).result(30)


def _listed_connected(r: RunningCollector, agent_id: str, token: str) -> bool:
    md = (("authorization", f"Bearer {token}"),)
    with r.channel() as ch:
        hosts = collector_pb2_grpc.QueryStub(ch).ListHosts(collector_pb2.ListHostsRequest(), metadata=md, timeout=30)
    return any(a.agent_id == agent_id and a.connected for a in hosts.agents_without_bundles)


def _parks(store: Store, agent_id: str) -> int:
    return len(store.list_audit(100, actor=agent_id, action="channel.park", outcome="ok"))


def test_a_snapshot_through_r2_rings_the_agent_parked_on_r1(replicas: Replicas, tmp_path: Path) -> None:
    r1, r2 = replicas.r1, replicas.r2
    agent_id, _key = _enrolled(r1, tmp_path / "home")
    engineer = r2.engineer_token()
    with _Daemon(tmp_path / "home"):
        _wait("agent parked on r1", lambda: agent_id in r1.server.router.parked() and _doorbells(r2.store))
        assert _doorbells(r2.store) == {agent_id: "r1"}
        _wait("its stream left", lambda: r1.server.router.session(agent_id) is None)
        # Parked on r1 counts as online on r2: by its row, not by anything r2 holds.
        assert agent_id not in r2.server.router.parked() and r2.server.router.session(agent_id) is None
        assert _on_loop(r2, r2.server.router.is_online(agent_id))
        assert _on_loop(r2, r2.server.router.online_among([agent_id, "nobody"])) == {agent_id}
        assert _listed_connected(r2, agent_id, engineer)
        parks_before = _parks(r2.store, agent_id)

        spec = collector_pb2.SnapshotRequestSpec(host=agent_id, scopes=["facts"], reason="rung across", timeout_s=60)
        md = (("authorization", f"Bearer {engineer}"),)
        with r2.channel() as ch:
            events = list(collector_pb2_grpc.QueryStub(ch).RequestSnapshot(spec, metadata=md, timeout=90))
        states = [LiveState(e.state) for e in events]
        assert states[0] is LiveState.QUEUED and states[-1] is LiveState.DONE, [(e.state, e.detail) for e in events]
        # r1 rang (it holds the doorbell) and sent it down the Channel the agent opened there.
        assert any("via r1" in e.detail for e in events), [e.detail for e in events]
        bundle = r2.store.get_bundle(events[-1].bundle_id)
        assert bundle.agent_id == agent_id and bundle.kind == "live"
        assert r2.store.get_live_request(events[-1].request_id).state == LiveState.DONE

        # Idle again, it parks again on r1, its row written again.
        _wait("parked again", lambda: _parks(r2.store, agent_id) > parks_before, timeout=60)
        _wait("its doorbell row again", lambda: _doorbells(r2.store) == {agent_id: "r1"})

        # r1 stops: its doorbells close and their rows go with its replica row; the agent
        # (enrolled with r1 only) is offline everywhere.
        replicas.stop("r1")
        assert _doorbells(r2.store) == {}
        with r2.store._read() as conn:
            assert set(conn.execute(select(collector_replicas.c.replica_id)).scalars()) == {"r2"}
        assert not _on_loop(r2, r2.server.router.is_online(agent_id))
        assert not _listed_connected(r2, agent_id, engineer)


def test_a_request_queued_on_r2_for_an_agent_parked_on_r1_is_rung_by_the_catch_up_scan(
    replicas: Replicas, tmp_path: Path
) -> None:
    """A missed NOTIFY (r1's LISTEN connection down while r2 wrote the request): r1's scan
    of the queued requests of the agents it holds, parked ones included, rings it."""
    r1, r2 = replicas.r1, replicas.r2
    agent_id, _key = _enrolled(r1, tmp_path / "home")
    with _Daemon(tmp_path / "home"):
        _wait("agent parked on r1", lambda: _doorbells(r2.store) == {agent_id: "r1"})
        request_id = secrets.token_hex(16)
        now = int(time.time() * 1_000_000)
        with r2.store.engine.begin() as conn:  # the row without its NOTIFY, as if the notification was lost
            conn.execute(live_requests.insert().values(
                request_id=request_id, agent_id=agent_id, hostname="chan-host", requested_by="tok",
                requested_label="bob", scopes="facts", since_s=0, reason="missed notify", state="queued", detail="",
                bundle_id=None, created_at=now, expires_at=now + 120_000_000, updated_at=now,
            ))  # fmt: skip
        done = _wait("done", lambda: (r := r2.store.get_live_request(request_id)).state == "done" and r, 60)
        assert done.bundle_id and r2.store.get_bundle(done.bundle_id).agent_id == agent_id
