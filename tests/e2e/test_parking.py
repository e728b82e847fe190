"""Parked agents, end to end: a real ``casefile-collector serve --park-after 1`` and a real
``casefile agent run`` process on loopback.

The agent's stream goes idle, it parks on the doorbell (its Channel ends, it stays online),
an engineer's snapshot rings it, it opens its Channel again, collects and the bundle is
stored; then it parks again. A collector restart sends a parked agent back to its Channel.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.transport.live_states import LiveState
from protos import collector_pb2, collector_pb2_grpc
from tests.e2e.test_live import Collector, Live, _tokens, connects, enroll_agent, free_port, wait_for

HOSTNAME = "parking-host"


def parks(c: Collector, agent_id: str) -> int:
    with c.store() as store:
        return len(store.list_audit(100, actor=agent_id, action="channel.park", outcome="ok"))


def _online(c: Collector, tokens: dict[str, str], agent_id: str) -> bool:
    md = (("authorization", f"Bearer {tokens['viewer']}"),)
    with c.channel() as ch:
        hosts = collector_pb2_grpc.QueryStub(ch).ListHosts(collector_pb2.ListHostsRequest(), metadata=md, timeout=10)
    # Before its first bundle the agent is listed with whether it is connected (parked counts).
    return any(a.agent_id == agent_id and a.connected for a in hosts.agents_without_bundles)


@pytest.fixture(scope="module")
def parked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("parking")
    c = Collector(data=tmp / "data", port=free_port(), log=tmp / "collector.log", args=("--park-after", "1"))
    c.start()
    agent = enroll_agent(c, tmp / "home", HOSTNAME)
    agent.start()
    env = Live(c, agent, _tokens(c))
    try:
        wait_for("agent parked", lambda: parks(c, agent.agent_id) >= 1, logs=agent.log.read_text)
        yield env
    finally:
        agent.stop_all()
        c.stop()


def test_an_idle_agent_parks_and_stays_online(parked: Live) -> None:
    c, agent = parked.collector, parked.agent
    assert connects(c, agent.agent_id) >= 1
    assert _online(c, parked.tokens, agent.agent_id)
    log = agent.log.read_text()
    assert "parked on the doorbell" in log, log


def test_a_snapshot_rings_a_parked_agent_and_is_stored(parked: Live) -> None:
    c, agent = parked.collector, parked.agent
    before_parks = parks(c, agent.agent_id)
    before_connects = connects(c, agent.agent_id)
    events = parked.snapshot(scopes=["facts"], reason="parked ring test", timeout_s=60)
    states = [LiveState(e.state) for e in events]
    assert states[-1] is LiveState.DONE, [(e.state, e.detail) for e in events]
    assert LiveState.DELIVERED in states
    bundle_id = events[-1].bundle_id
    with c.store() as store:
        assert store.get_bundle(bundle_id).agent_id == agent.agent_id
    # The ring brought its Channel back (a connect), and once idle again it parks again.
    assert connects(c, agent.agent_id) > before_connects
    wait_for("parked again", lambda: parks(c, agent.agent_id) > before_parks, logs=agent.log.read_text)
    assert "rung by the collector" in agent.log.read_text()


def test_a_request_queued_with_wait_while_parked_is_delivered(parked: Live) -> None:
    """Two requests at once for one parked agent: one ring, both answered in turn."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(parked.snapshot, scopes=["facts"], reason=f"pair {i}", wait_s=30) for i in range(2)]
        ends = [f.result(120)[-1] for f in runs]
    assert [LiveState(e.state) for e in ends] == [LiveState.DONE, LiveState.DONE], [e.detail for e in ends]


def test_a_collector_restart_sends_a_parked_agent_back_to_its_channel(parked: Live) -> None:
    c, agent = parked.collector, parked.agent
    last_line = lambda: agent.log.read_text().strip().splitlines()[-1]  # noqa: E731
    wait_for("parked now", lambda: "parked on the doorbell" in last_line(), logs=agent.log.read_text)
    before = connects(c, agent.agent_id)
    before_parks = parks(c, agent.agent_id)
    c.stop()
    wait_for("back to its channel", lambda: "doorbell ended" in agent.log.read_text(), logs=agent.log.read_text)
    c.start()
    wait_for("reconnected", lambda: connects(c, agent.agent_id) > before, timeout=60, logs=agent.log.read_text)
    wait_for("parked again", lambda: parks(c, agent.agent_id) > before_parks, timeout=60, logs=agent.log.read_text)
    events = parked.snapshot(scopes=["facts"], reason="after restart", timeout_s=60)
    assert LiveState(events[-1].state) is LiveState.DONE, [e.detail for e in events]
