"""Replica liveness in the store: one heartbeat row per replica, channel rows written only
on connect and disconnect, doorbell rows only on park and unpark, and "connected" meaning
the holding replica is alive."""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy import select

from collector.storage import Store
from collector.storage.doorbells_schema import agent_doorbells
from collector.storage.live import agent_channels, collector_replicas


def _us(seconds_ago: float = 0.0) -> int:
    return int((time.time() - seconds_ago) * 1_000_000)


def _channel_rows(store: Store) -> dict[str, tuple[str, int, int]]:
    h = agent_channels.c
    with store._read() as conn:
        rows = conn.execute(select(h.agent_id, h.replica_id, h.connected_at, h.heartbeat_at))
        return {r.agent_id: (r.replica_id, r.connected_at, r.heartbeat_at) for r in rows}


def _beats(store: Store) -> dict[str, int]:
    r = collector_replicas.c
    with store._read() as conn:
        return {row.replica_id: row.heartbeat_at for row in conn.execute(select(r.replica_id, r.heartbeat_at))}


def test_heartbeat_writes_one_row_and_leaves_channel_rows_alone(store: Store) -> None:
    assert store.heartbeat_replica("r1") is False  # first beat: the row was not there
    agents = [f"agent-{i:03d}" for i in range(50)]
    for a in agents:
        assert store.claim_channel(a, "r1", f"ipv4:127.0.0.1:{1000 + len(a)}", _us(15)) is None
    before = _channel_rows(store)
    beat0 = _beats(store)["r1"]
    time.sleep(0.01)
    for _ in range(3):
        assert store.heartbeat_replica("r1") is True
    assert _channel_rows(store) == before  # 3 heartbeats, not one channel row touched
    assert _beats(store)["r1"] > beat0 and list(_beats(store)) == ["r1"]
    assert store.agents_with_fresh_channels([*agents, "nobody"], _us(15)) == set(agents)
    holder = store.channel_holder("agent-007", _us(15))
    assert holder is not None and holder.replica_id == "r1" and holder.heartbeat_at_us == _beats(store)["r1"]


def test_agents_of_a_replica_without_a_fresh_heartbeat_are_gone_and_taken_over(store: Store) -> None:
    store.heartbeat_replica("r1")
    store.heartbeat_replica("r2")
    assert store.claim_channel("a1", "r1", "p1", _us(15)) is None
    # While r1 is alive a second stream elsewhere is refused and the row stays r1's.
    refused = store.claim_channel("a1", "r2", "p2", _us(15))
    assert refused is not None and refused.replica_id == "r1" and refused.peer == "p1"
    # Seen from a moment when r1's last heartbeat is too old (it was SIGKILLed): gone.
    later = _us(-1)
    store.heartbeat_replica("r2")  # r2 keeps beating
    assert store.channel_holder("a1", later) is None
    assert store.agents_with_fresh_channels(["a1"], later) == set()
    # The agent reconnects to r2: r2 takes the row over from the dead replica.
    assert store.claim_channel("a1", "r2", "p2", later) is None
    assert _channel_rows(store)["a1"][0] == "r2"


def test_survivors_reap_a_dead_replica_and_a_paused_one_writes_its_rows_again(store: Store) -> None:
    store.heartbeat_replica("dead")
    for a in ("d1", "d2", "d3"):
        store.claim_channel(a, "dead", "p", _us(15))
    time.sleep(0.01)
    cutoff = _us()
    time.sleep(0.01)
    store.heartbeat_replica("alive")
    store.claim_channel("x1", "alive", "p", _us(15))
    assert store.reap_dead_replicas(cutoff) == (3, 1)
    assert set(_channel_rows(store)) == {"x1"} and set(_beats(store)) == {"alive"}
    assert store.reap_dead_replicas(cutoff) == (0, 0)
    # "dead" was only paused: its next heartbeat finds its row gone and it writes the rows
    # of the streams it still holds; d3 reconnected to "alive" meanwhile and stays there.
    store.claim_channel("d3", "alive", "p", _us(15))
    assert store.heartbeat_replica("dead") is False
    assert store.reclaim_channels("dead", [("d1", "p"), ("d2", "p"), ("d3", "p")]) == 2
    rows = _channel_rows(store)
    assert {a: rows[a][0] for a in rows} == {"x1": "alive", "d1": "dead", "d2": "dead", "d3": "alive"}


def test_orphan_rows_and_a_stopping_replica(store: Store) -> None:
    store.heartbeat_replica("r1")
    store.claim_channel("a1", "r1", "p", _us(15))
    store.claim_channel("old", "pre-upgrade-replica", "p", _us(15))  # no replica row at all
    assert store.channel_holder("old", _us(15)) is None
    assert store.reap_orphan_channels() == 1
    assert store.forget_replica("r1") == 1
    assert _channel_rows(store) == {} and _beats(store) == {}


def test_grouped_channel_changes_keep_their_order_and_refuse_like_one_claim(store: Store) -> None:
    """A storm's connects and disconnects share one transaction (``write_channels``): each change
    counts as if alone and in the order queued, so an agent that left and came back in one batch
    keeps its row, and a release never deletes another replica's row."""
    store.heartbeat_replica("r1")
    store.heartbeat_replica("r2")
    assert store.claim_channel("elsewhere", "r2", "p-r2", _us(15)) is None
    assert store.claim_channel("leaving", "r1", "p0", _us(15)) is None
    changes: list[tuple[str, str | None]] = [
        ("a1", "p1"),
        ("a2", "p2"),
        ("elsewhere", "p3"),  # held by r2, alive: refused, the row stays r2's
        ("leaving", None),
        ("a1", None),  # a1 left and came back within the batch: its row must end up there
        ("a1", "p1-again"),
        ("a2", None),  # a2 left for good
        ("elsewhere", None),  # not r1's row: left alone
    ]
    out = store.write_channels("r1", changes, _us(15))
    assert [h is None for h in out] == [True, True, False, True, True, True, True, True]
    refused = out[2]
    assert refused is not None and refused.replica_id == "r2" and refused.peer == "p-r2"
    h = agent_channels.c
    with store._read() as conn:
        rows = {r.agent_id: (r.replica_id, r.peer) for r in conn.execute(select(h.agent_id, h.replica_id, h.peer))}
    assert rows == {"a1": ("r1", "p1-again"), "elsewhere": ("r2", "p-r2")}
    assert store.write_channels("r1", [], _us(15)) == []


def _doorbell_rows(store: Store) -> dict[str, tuple[str, str]]:
    d = agent_doorbells.c
    with store._read() as conn:
        return {r.agent_id: (r.replica_id, r.peer) for r in conn.execute(select(d.agent_id, d.replica_id, d.peer))}


def test_grouped_doorbell_writes_the_newest_wins_and_a_late_close_elsewhere_keeps_it(store: Store) -> None:
    """A parked agent's doorbell row (``write_doorbells``): the newest park wins whichever
    replica held the row (the agent dials again only when its old connection died
    unnoticed), and the old replica's doorbell closing afterwards deletes nothing."""
    store.heartbeat_replica("r1")
    store.heartbeat_replica("r2")
    changes: list[tuple[str, str | None]] = [
        ("p1", "d1"),
        ("p2", "d2"),
        ("p3", "d3"),
        ("p2", None),  # p2's doorbell closed: gone
        ("p3", None),  # p3 left and parked again within the batch: its row ends up there
        ("p3", "d3-again"),
    ]
    assert store.write_doorbells("r1", changes) == [None] * 6
    assert _doorbell_rows(store) == {"p1": ("r1", "d1"), "p3": ("r1", "d3-again")}
    # p1 parks on r2 while r1 is alive (its r1 connection died unnoticed): r2's is the row.
    assert store.write_doorbells("r2", [("p1", "d1-r2")]) == [None]
    # r1 finds its old doorbell dead later: its release leaves r2's row alone.
    store.write_doorbells("r1", [("p1", None)])
    assert _doorbell_rows(store) == {"p1": ("r2", "d1-r2"), "p3": ("r1", "d3-again")}
    # Parked counts as online, on a replica with a fresh heartbeat; a stream comes first.
    assert store.agents_with_fresh_channels(["p1", "p3", "nobody"], _us(15)) == {"p1", "p3"}
    assert store.channel_holder("p1", _us(15)) is None  # the stream holder only, unless asked
    holder = store.channel_holder("p1", _us(15), parked=True)
    assert holder is not None and (holder.replica_id, holder.peer, holder.parked) == ("r2", "d1-r2", True)
    store.claim_channel("p3", "r2", "stream-p3", _us(15))  # rung: its Channel opened on r2
    holder = store.channel_holder("p3", _us(15), parked=True)
    assert holder is not None and (holder.replica_id, holder.parked) == ("r2", False)
    later = _us(-1)  # r1 and r2 both silent past the timeout: nobody is online
    assert store.agents_with_fresh_channels(["p1", "p3"], later) == set()
    assert store.channel_holder("p1", later, parked=True) is None
    assert store.write_doorbells("r1", []) == []


def test_doorbell_rows_go_and_come_back_with_their_replicas(store: Store) -> None:
    store.heartbeat_replica("dead")
    store.write_doorbells("dead", [("b1", "p"), ("b2", "p")])
    store.claim_channel("c1", "dead", "p", _us(15))
    time.sleep(0.01)
    cutoff = _us()
    time.sleep(0.01)
    store.heartbeat_replica("alive")
    store.write_doorbells("alive", [("x1", "p")])
    assert store.reap_dead_replicas(cutoff) == (3, 1)  # two doorbells and a channel
    assert _doorbell_rows(store) == {"x1": ("alive", "p")}
    # "dead" was only paused: it writes its streams and doorbells again; b2 parked on "alive" meanwhile.
    store.write_doorbells("alive", [("b2", "p-alive")])
    assert store.heartbeat_replica("dead") is False
    assert store.reclaim_channels("dead", [("c1", "p")], [("b1", "p"), ("b2", "p")]) == 2
    assert _doorbell_rows(store) == {"x1": ("alive", "p"), "b1": ("dead", "p"), "b2": ("alive", "p-alive")}
    # Queued requests of the agents parked on a replica are that replica's to ring.
    store.write_doorbells("dead", [("parked-agent", "p")])
    req = store.create_live_request(
        agent_id="parked-agent", hostname="parked-host", requested_by="tok", requested_label="eve", scopes=("facts",),
        since_s=0, reason="test", expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
    )  # fmt: skip
    assert [r.request_id for r in store.queued_live_requests_for_replica("dead")] == [req.request_id]
    assert store.queued_live_requests_for_replica("alive") == []
    assert store.release_replica_channels("dead") == 3  # c1, b1 and the agent's doorbell
    store.write_doorbells("gone-without-a-row", [("orphan", "p")])
    assert store.reap_orphan_channels() == 1
    assert store.forget_replica("alive") == 0  # no channels; its doorbells go with it
    assert _doorbell_rows(store) == {}
