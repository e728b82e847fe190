"""A live request's state on the wire: the ``LiveState`` enum beside the deprecated string.

Senders fill both (``live_state`` and ``state``); a receiver reads the enum and falls back
to the string when the enum is UNSPECIFIED (a peer of an earlier release) or unknown (a
later one). The agent side here is a hand-driven Channel client with an enrolled key,
through a real collector on loopback, so it can send exactly what an agent of an earlier
release (the string only) or of a later one (the enum only) would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from agent.daemon import channel_message
from agent.keys import SigningKey
from agent.transport.connect import PINNED_TARGET_NAME, fetch_certificate, parse_address
from agent.transport.live_states import LiveState, in_words, state_of, to_wire
from collector.web.hunts import _host
from collector.web.work import _event
from protos import collector_pb2, collector_pb2_grpc
from tests.collector.conftest import RunningCollector
from tests.collector.test_channel import _enrolled, _wait

UNSPECIFIED = collector_pb2.LIVE_STATE_UNSPECIFIED


class _HandAgent:
    """An enrolled agent's Channel stream, driven by hand in its own thread and loop: it
    answers the first snapshot request with the progress messages it was given."""

    def __init__(self, collector: RunningCollector, agent_id: str, key: SigningKey) -> None:
        self.collector, self.agent_id, self.key = collector, agent_id, key
        self.progress: list[collector_pb2.SnapshotProgress] = []
        self.request_id = ""
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._stream())
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    async def _stream(self) -> None:
        pem = fetch_certificate(parse_address(self.collector.address))
        creds = grpc.ssl_channel_credentials(root_certificates=pem)
        options = [("grpc.ssl_target_name_override", PINNED_TARGET_NAME)]
        async with grpc.aio.secure_channel(self.collector.address, creds, options=options) as ch:
            call: Any = collector_pb2_grpc.ChannelStub(ch).Connect()
            await call.write(collector_pb2.AgentMessage(hello=collector_pb2.ChannelHello(agent_id=self.agent_id)))
            challenge = await call.read()
            signature = self.key.sign(channel_message(bytes(challenge.challenge.nonce), self.agent_id))
            await call.write(
                collector_pb2.AgentMessage(challenge_response=collector_pb2.ChallengeResponse(signature=signature))
            )
            assert (await call.read()).accepted.agent_id == self.agent_id
            while True:
                msg = await call.read()
                if msg.HasField("snapshot_request"):
                    break
            self.request_id = msg.snapshot_request.request_id
            for progress in self.progress:
                progress.request_id = self.request_id
                await call.write(collector_pb2.AgentMessage(progress=progress))
            await asyncio.to_thread(self.done.wait, 60)
            call.cancel()


@pytest.fixture
def hand_agent(sqlite_collector: RunningCollector, tmp_path: Path) -> Iterator[_HandAgent]:
    agent_id, key = _enrolled(sqlite_collector, tmp_path / "home")
    agent = _HandAgent(sqlite_collector, agent_id, key)
    yield agent
    agent.done.set()
    agent.thread.join(30)


def _snapshot(agent: _HandAgent, *progress: collector_pb2.SnapshotProgress) -> list[collector_pb2.SnapshotEvent]:
    """Connect the hand agent, send it one request, and return the engineer's events."""
    c = agent.collector
    agent.progress = list(progress)
    agent.thread.start()
    _wait("agent connected", lambda: c.server.router.session(agent.agent_id) is not None)
    md = (("authorization", f"Bearer {c.engineer_token()}"),)
    spec = collector_pb2.SnapshotRequestSpec(host=agent.agent_id, timeout_s=30)
    try:
        with c.channel() as ch:
            return list(collector_pb2_grpc.QueryStub(ch).RequestSnapshot(spec, metadata=md, timeout=60))
    finally:
        agent.done.set()
        agent.thread.join(30)
        assert agent.error is None, agent.error


def _both_agree(events: list[collector_pb2.SnapshotEvent]) -> list[str]:
    """Every event carries the state twice, the same state; returns the words."""
    for e in events:
        assert e.live_state != UNSPECIFIED and e.live_state == to_wire(e.state), e
    return [e.state for e in events]


def test_a_round_trip_carries_both_fields(hand_agent: _HandAgent) -> None:
    """An agent of this release sends both; the collector stores and streams both."""
    sent = [
        collector_pb2.SnapshotProgress(state=s, live_state=to_wire(s), detail=f"now {s}")
        for s in (LiveState.COLLECTING, LiveState.UPLOADING, LiveState.FAILED)
    ]
    events = _snapshot(hand_agent, *sent)
    assert _both_agree(events) == ["queued", "delivered", "collecting", "uploading", "failed"]
    assert [e.detail for e in events[2:]] == ["now collecting", "now uploading", "now failed"]
    rec = hand_agent.collector.store.get_live_request(hand_agent.request_id)
    assert (rec.state, rec.detail) == ("failed", "now failed")
    # Through the wire's bytes and back, the enum survives as itself.
    again = collector_pb2.SnapshotEvent.FromString(events[-1].SerializeToString())
    assert again.live_state == collector_pb2.LIVE_STATE_FAILED and state_of(again) is LiveState.FAILED


def test_an_agent_of_an_earlier_release_sending_only_the_string_is_understood(hand_agent: _HandAgent) -> None:
    sent = [collector_pb2.SnapshotProgress(state=s) for s in ("collecting", "uploading", "denied")]
    assert all(p.live_state == UNSPECIFIED for p in sent)
    events = _snapshot(hand_agent, *sent)
    # The collector answers the engineer in both fields, whatever the agent spoke.
    assert _both_agree(events) == ["queued", "delivered", "collecting", "uploading", "denied"]
    assert hand_agent.collector.store.get_live_request(hand_agent.request_id).state == "denied"


def test_an_agent_sending_only_the_enum_is_understood(hand_agent: _HandAgent) -> None:
    sent = [
        collector_pb2.SnapshotProgress(live_state=v)
        for v in (
            collector_pb2.LIVE_STATE_COLLECTING,
            collector_pb2.LIVE_STATE_UPLOADING,
            collector_pb2.LIVE_STATE_EXPIRED,
        )
    ]
    assert all(p.state == "" for p in sent)
    events = _snapshot(hand_agent, *sent)
    assert _both_agree(events) == ["queued", "delivered", "collecting", "uploading", "expired"]
    assert hand_agent.collector.store.get_live_request(hand_agent.request_id).state == "expired"


def test_an_enum_value_of_a_later_release_falls_back_to_the_string(hand_agent: _HandAgent) -> None:
    """A value this release does not know (99) is read as the string sent beside it; an
    agent's ``done`` is still not taken (only a stored bundle says done)."""
    later = collector_pb2.SnapshotProgress.FromString(
        collector_pb2.SnapshotProgress(state="collecting").SerializeToString() + b"\x28\x63"  # field 5 = 99
    )
    assert later.live_state == 99 and state_of(later) is LiveState.COLLECTING
    done = collector_pb2.SnapshotProgress(state="done", live_state=collector_pb2.LIVE_STATE_DONE)
    failed = collector_pb2.SnapshotProgress(state="failed", live_state=collector_pb2.LIVE_STATE_FAILED)
    events = _snapshot(hand_agent, later, done, failed)
    assert _both_agree(events) == ["queued", "delivered", "collecting", "failed"]


# ------------------------------------------------------------------ what clients show


def _event_of_earlier_collector(state: str) -> collector_pb2.SnapshotEvent:
    return collector_pb2.SnapshotEvent(request_id="lr_1", state=state, detail="d", agent_id="ag_1")


@pytest.mark.parametrize("state", [s.value for s in LiveState])
def test_the_cli_prints_and_writes_the_same_whichever_field_came(state: str) -> None:
    """``snapshot --json`` and ``hunt status --json`` print what they did before the enum:
    the word in ``state``, no ``live_state`` key, from an earlier collector (string only),
    this one (both) or one that sent the enum only."""
    earlier = _event_of_earlier_collector(state)
    expected = json_format.MessageToDict(earlier, preserving_proto_field_name=True)
    assert expected == {"request_id": "lr_1", "state": state, "detail": "d", "agent_id": "ag_1"}
    both = _event_of_earlier_collector(state)
    both.live_state = to_wire(state)
    only_enum = _event_of_earlier_collector("")
    only_enum.live_state = to_wire(state)
    for message in (earlier, both, only_enum):
        in_words(message)
        assert json_format.MessageToDict(message, preserving_proto_field_name=True) == expected
        assert message.state == state and _event(message)["state"] == state
    host = collector_pb2.HuntHost(agent_id="ag_1", live_state=to_wire(state))
    assert _host(host)["state"] == state
    in_words(host)
    assert json_format.MessageToDict(host, preserving_proto_field_name=True) == {"agent_id": "ag_1", "state": state}


def test_hunt_status_json_is_the_same_whichever_field_came() -> None:
    """``hunt status --json`` prints every field, set or not: ``live_state`` stays out."""
    from collector.cli_hunt import _status_doc

    def status(**host: Any) -> collector_pb2.HuntStatus:
        return collector_pb2.HuntStatus(hunt_id="hu_1", hosts=[collector_pb2.HuntHost(agent_id="ag_1", **host)])

    earlier = _status_doc(status(state="done"))
    assert earlier["hosts"] == [
        {"agent_id": "ag_1", "hostname": "", "request_id": "", "state": "done", "detail": "", "bundle_id": ""}
    ]
    for same in (status(state="done", live_state=to_wire("done")), status(live_state=to_wire("done"))):
        doc = _status_doc(same)
        assert doc == earlier and [list(h) for h in doc["hosts"]] == [list(h) for h in earlier["hosts"]]


def test_a_word_no_release_knows_is_shown_as_it_came() -> None:
    odd = collector_pb2.SnapshotEvent(state="paused")
    assert to_wire("paused") == UNSPECIFIED and state_of(odd) == "paused"
    in_words(odd)
    assert odd.state == "paused" and odd.live_state == UNSPECIFIED


def test_every_state_has_its_enum_value_and_back() -> None:
    names = [collector_pb2.LiveState.Name(v) for v in collector_pb2.LiveState.values()]
    assert names[0] == "LIVE_STATE_UNSPECIFIED"
    names = names[1:]
    assert names == [f"LIVE_STATE_{s.name}" for s in LiveState]
    for s in LiveState:
        value = to_wire(s)
        assert value != UNSPECIFIED
        assert state_of(collector_pb2.SnapshotEvent(live_state=value)) is s
        assert state_of(collector_pb2.SnapshotEvent(state=s.value)) is s
