"""The PostgreSQL router's channel rows: written off the event loop, grouped, in order.

A replica's claims (an agent connected) and releases (it left) go through one queue and one
thread (``collector.replica_rows.ReplicaRows``); these pin what the grouping must not change: each
connect is answered only after its row is committed or refused, an agent that leaves and comes
straight back keeps its row, and a connect abandoned while its claim is on the way leaves no row.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import grpc
import pytest
from sqlalchemy import select

from collector.edge import Rejected
from collector.live_pg import PgLiveRouter, libpq_dsn
from collector.storage import Store
from collector.storage.live import agent_channels

pytestmark = pytest.mark.postgres


def _rows(store: Store) -> dict[str, tuple[str, str]]:
    h = agent_channels.c
    with store._read() as conn:
        return {r.agent_id: (r.replica_id, r.peer) for r in conn.execute(select(h.agent_id, h.replica_id, h.peer))}


@pytest.fixture
def replica_r1(postgres_url: str) -> Iterator[tuple[Store, PgLiveRouter]]:
    """Replica r1's router, alive (its heartbeat written); its row writer stopped after the test."""
    store = Store.open(postgres_url)
    router = PgLiveRouter(store, libpq_dsn(postgres_url), "r1")
    store.heartbeat_replica("r1")
    try:
        yield store, router
    finally:
        asyncio.run(router._rows.aclose(timeout_s=5.0))
        store.close()


def test_connects_are_grouped_and_a_quick_return_keeps_its_row(replica_r1: tuple[Store, PgLiveRouter]) -> None:
    store, router = replica_r1
    store.heartbeat_replica("r2")
    store.claim_channel("held-by-r2", "r2", "p-r2", int((time.time() - 15) * 1_000_000))
    agents = [f"ag{i:03d}" for i in range(60)]

    async def run() -> None:
        sessions = await asyncio.gather(*(router.connect(a, f"p-{a}") for a in agents))
        assert _rows(store) == {**{a: ("r1", f"p-{a}") for a in agents}, "held-by-r2": ("r2", "p-r2")}
        # 60 connects at once: far fewer transactions than rows.
        assert router._rows.changes == 60 and 1 <= router._rows.batches <= 10
        # Each agent leaves and is back at once: its release is queued before its new claim.
        for s in sessions:
            router.unregister(s)
        again = await asyncio.gather(*(router.connect(a, f"q-{a}") for a in agents))
        assert {a: r for a, r in _rows(store).items() if a != "held-by-r2"} == {a: ("r1", f"q-{a}") for a in agents}
        # A live replica's agent is refused, and this replica keeps no session for it.
        with pytest.raises(Rejected) as refused:
            await router.connect("held-by-r2", "p-clone")
        assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS and "replica r2" in str(refused.value)
        assert router.session("held-by-r2") is None and _rows(store)["held-by-r2"] == ("r2", "p-r2")
        for s in again[:30]:
            router.unregister(s)
        await router.connect("last", "p")  # committed after the releases queued before it
        assert set(_rows(store)) == {*agents[30:], "last", "held-by-r2"}

    asyncio.run(run())


def test_a_connect_abandoned_while_its_claim_is_on_the_way_leaves_no_row(
    replica_r1: tuple[Store, PgLiveRouter],
) -> None:
    store, router = replica_r1

    async def run() -> None:
        first = asyncio.create_task(router.connect("busy", "p"))
        abandoned = asyncio.create_task(router.connect("gone", "p"))  # queued; cancelled before its answer
        await asyncio.sleep(0)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        await first
        await router.connect("last", "p")
        assert router.session("gone") is None
        assert set(_rows(store)) == {"busy", "last"}

    asyncio.run(run())


def test_a_replica_restarted_on_its_address_frees_its_predecessors_rows_at_once(postgres_url: str) -> None:
    """Without --replica-id a replica is named HOST-PORT: killed and started again on the same
    address, it takes the same name and frees the rows the dead process left, so their agents
    are taken back at once, not refused as held until the dead heartbeat is stale."""
    port = 7443
    name = f"{socket.gethostname()}-{port}"
    store = Store.open(postgres_url)
    store.heartbeat_replica(name)  # the predecessor, killed a moment ago: its heartbeat is fresh
    store.claim_channel("ag-of-the-dead", name, "p-old", int((time.time() - 15) * 1_000_000))
    named = PgLiveRouter(store, libpq_dsn(postgres_url), "r9")
    named.bound_to(port)
    assert named.replica_id == "r9"  # the operator's name is kept
    router = PgLiveRouter(store, libpq_dsn(postgres_url), None)
    assert router.replica_id != name  # HOST-PID until the port is known
    router.bound_to(port)
    assert router.replica_id == name

    async def run() -> None:
        await router.start()
        try:
            assert "ag-of-the-dead" not in _rows(store)
            await router.connect("ag-of-the-dead", "p-new")
            assert _rows(store)["ag-of-the-dead"] == (name, "p-new")
        finally:
            await router.aclose()

    try:
        asyncio.run(run())
    finally:
        asyncio.run(named._rows.aclose(timeout_s=5.0))
        store.close()
