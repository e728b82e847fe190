"""Two collector replicas on one PostgreSQL database and one shared data folder.

An engineer asks replica 1 for a live snapshot of an agent whose stream is held by
replica 2: the request crosses replicas through the ``live_requests`` row and
``NOTIFY casefile_live``, replica 2 claims it and pushes it down the stream, the agent
(a real ``casefile agent run`` process) uploads to replica 2, and replica 1 streams
``done`` back to the engineer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agent.state import AgentHome, Enrollment
from agent.transport import enroll
from protos import collector_pb2, collector_pb2_grpc
from tests.e2e.test_faults import Served
from tests.e2e.test_live import BIN, free_port, wait_for

pytestmark = pytest.mark.postgres


@dataclass
class Pair:
    r1: Served
    r2: Served
    agent_id: str
    home: Path
    agent_log: Path
    engineer: str


def _holder(r: Served, agent_id: str) -> str | None:
    with r.store() as store:
        h = store.channel_holder(agent_id, int((time.time() - 60) * 1e6))
    return None if h is None else h.replica_id


def _start_agent(home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CASEFILE_AGENT_BACKOFF_MAX": "0.5", "CASEFILE_AGENT_BACKOFF_BASE": "0.1"}
    with log.open("a") as fh:
        return subprocess.Popen([str(BIN / "casefile"), "agent", "run", "--home", str(home)],
                                stdout=fh, stderr=subprocess.STDOUT, env=env)


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[Pair]:
    data = tmp_path / "shared"
    r1 = Served(data, free_port(), tmp_path / "r1.log", db_url=postgres_url, replica_id="r1")
    r2 = Served(data, free_port(), tmp_path / "r2.log", db_url=postgres_url, replica_id="r2")
    agent: subprocess.Popen[bytes] | None = None
    r1.start()  # first: it makes the shared TLS certificate and migrates
    try:
        r2.start()
        assert r1.fingerprint == r2.fingerprint
        with r1.store() as store:
            import datetime as dt

            tok, _ = store.create_token("enroll", label="replicas", ttl=dt.timedelta(hours=1), max_uses=1)
            eng, _ = store.create_token("engineer", role="engineer", label="eve", ttl=dt.timedelta(hours=1))
        home = AgentHome(tmp_path / "home")
        key = home.key()
        with r2.channel() as ch:
            resp = enroll(ch, token=tok, key=key, hostname="replica-box", agent_version="test")
        home.save_enrollment(Enrollment(resp.agent_id, r2.addr, r2.fingerprint, key.fingerprint))
        log = tmp_path / "agent.log"
        agent = _start_agent(home.root, log)
        wait_for("agent held by r2", lambda: _holder(r1, resp.agent_id) == "r2", logs=log.read_text)
        yield Pair(r1, r2, resp.agent_id, home.root, log, eng)
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        r2.stop()
        r1.stop()


def test_hosts_on_replica_1_shows_the_agent_replica_2_holds_as_connected(pair: Pair) -> None:
    """Before its first bundle the agent is listed among the agents without bundles, and
    "connected" comes from the shared channel table, whichever replica is asked."""
    md = (("authorization", f"Bearer {pair.engineer}"),)
    for r in (pair.r1, pair.r2):
        with r.channel() as ch:
            resp = collector_pb2_grpc.QueryStub(ch).ListHosts(collector_pb2.ListHostsRequest(), metadata=md, timeout=30)
        (listed,) = [a for a in resp.agents_without_bundles if a.agent_id == pair.agent_id]
        assert listed.connected and listed.hostname == "replica-box", (r.addr, listed)


def test_engineer_on_replica_1_gets_snapshot_from_agent_on_replica_2(pair: Pair) -> None:
    md = (("authorization", f"Bearer {pair.engineer}"),)
    spec = collector_pb2.SnapshotRequestSpec(host=pair.agent_id, reason="SR-7 across replicas", timeout_s=60)
    with pair.r1.channel() as ch:
        events = list(collector_pb2_grpc.QueryStub(ch).RequestSnapshot(spec, metadata=md, timeout=90))
    states = [e.state for e in events]
    assert states[0] == "queued" and states[-1] == "done", (states, pair.r1.log.read_text()[-3000:])
    assert "via r2" in next(e.detail for e in events if e.state != "queued") or "delivered" not in states
    bundle_id = events[-1].bundle_id
    with pair.r1.store() as store:
        rec = store.get_bundle(bundle_id)
        req = store.get_live_request(events[-1].request_id)
    assert rec.kind == "live" and rec.agent_id == pair.agent_id
    assert req.state == "done" and req.bundle_id == bundle_id
    hist = [json.loads(x) for x in (pair.home / "history.jsonl").read_text().splitlines()]
    assert [h["outcome"] for h in hist if h.get("request_id") == req.request_id] == ["accepted", "done"]


def test_second_stream_on_the_other_replica_is_refused(pair: Pair, tmp_path: Path) -> None:
    """A clone of the agent reaching replica 1 while replica 2 holds the stream."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for f in pair.home.iterdir():
        if f.is_file():
            (clone / f.name).write_bytes(f.read_bytes())
            (clone / f.name).chmod(f.stat().st_mode)
    state = AgentHome(clone)
    e = state.enrollment()
    assert e is not None
    state.save_enrollment(Enrollment(e.agent_id, pair.r1.addr, e.ca_fingerprint, e.key_fingerprint))
    log = tmp_path / "clone.log"
    proc = _start_agent(clone, log)
    try:
        wait_for("clone refused", lambda: "ALREADY_EXISTS" in log.read_text(), logs=log.read_text)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert "replica r2" in log.read_text()
    assert _holder(pair.r1, pair.agent_id) == "r2"


def test_snapshot_of_unknown_stream_owner_is_offline_at_once(pair: Pair) -> None:
    """An agent known to the database but held by no replica fails fast on either replica."""
    md = (("authorization", f"Bearer {pair.engineer}"),)
    with pair.r1.store() as store:
        from agent.keys import SigningKey, fingerprint_of

        k = SigningKey.generate()
        other = store.create_agent(k.public.raw, fingerprint_of(k.public.raw), "nobody-box", None)
    for r in (pair.r1, pair.r2):
        with r.channel() as ch, pytest.raises(grpc.RpcError) as info:
            list(collector_pb2_grpc.QueryStub(ch).RequestSnapshot(
                collector_pb2.SnapshotRequestSpec(host=other.id), metadata=md, timeout=30))
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def _connected(r: Served, agent_id: str, engineer: str) -> bool:
    md = (("authorization", f"Bearer {engineer}"),)
    with r.channel() as ch:
        resp = collector_pb2_grpc.QueryStub(ch).ListHosts(collector_pb2.ListHostsRequest(), metadata=md, timeout=30)
    return any(a.connected for a in resp.agents_without_bundles if a.agent_id == agent_id)


def _xmins(r: Served, agent_id: str, replica_id: str) -> tuple[str, str]:
    """PostgreSQL's row versions of the agent's channel row and of the replica's row: an
    UPDATE makes a new version with a new ``xmin``."""
    from sqlalchemy import text

    with r.store() as store, store._read() as conn:
        chan = conn.execute(text("SELECT xmin::text FROM agent_channels WHERE agent_id = :a"), {"a": agent_id})
        rep = conn.execute(text("SELECT xmin::text FROM collector_replicas WHERE replica_id = :r"), {"r": replica_id})
        return str(chan.scalar_one()), str(rep.scalar_one())


def _replica_rows(r: Served) -> tuple[set[str], set[str]]:
    from sqlalchemy import select

    from collector.storage.live import agent_channels, collector_replicas

    with r.store() as store, store._read() as conn:
        reps = set(conn.execute(select(collector_replicas.c.replica_id)).scalars())
        held = set(conn.execute(select(agent_channels.c.replica_id)).scalars())
    return reps, held


def test_a_held_channel_row_is_not_rewritten_while_the_replica_heartbeats(pair: Pair) -> None:
    """Liveness is one row per replica: over two heartbeat periods the replica's own row
    gets new versions and the agent's channel row none."""
    chan0, rep0 = _xmins(pair.r1, pair.agent_id, "r2")
    time.sleep(11)
    chan1, rep1 = _xmins(pair.r1, pair.agent_id, "r2")
    assert chan1 == chan0, "the channel row was rewritten while the agent stayed connected"
    assert rep1 != rep0, "replica r2's heartbeat row was not refreshed in 11 s"
    assert _holder(pair.r1, pair.agent_id) == "r2" and _connected(pair.r1, pair.agent_id, pair.engineer)


def test_sigkilled_replica_agents_are_gone_then_taken_over_and_its_rows_reaped(pair: Pair, tmp_path: Path) -> None:
    """Replica 2 is SIGKILLed (no release of its rows): replica 1 sees its agent as gone once
    r2's heartbeat is older than the timeout; a new replica r3 on r2's address takes the
    agent's stale row over when the agent reconnects; the survivors delete r2's rows."""
    assert _connected(pair.r1, pair.agent_id, pair.engineer)
    pair.r2.stop(signal.SIGKILL)
    killed = time.monotonic()
    assert _replica_rows(pair.r1)[1] == {"r2"}  # nothing released: the row is still there
    wait_for("r1 sees the agent of the killed r2 as gone",
             lambda: not _connected(pair.r1, pair.agent_id, pair.engineer), timeout=40)
    assert time.monotonic() - killed >= 8  # not before a heartbeat period or so went missing
    r3 = Served(pair.r2.data, pair.r2.port, tmp_path / "r3.log", db_url=pair.r2.db_url, replica_id="r3")
    r3.start()
    try:
        wait_for("the agent reconnected to r3, which took the row over",
                 lambda: _holder(pair.r1, pair.agent_id) == "r3", timeout=60, logs=pair.agent_log.read_text)
        assert _connected(pair.r1, pair.agent_id, pair.engineer)
        wait_for("r2's replica row and channel rows reaped by a survivor",
                 lambda: "r2" not in _replica_rows(pair.r1)[0], timeout=60)
        reps, held = _replica_rows(pair.r1)
        assert reps == {"r1", "r3"} and held == {"r3"}
        assert "without a heartbeat" in pair.r1.log.read_text() + r3.log.read_text()
    finally:
        r3.stop()
