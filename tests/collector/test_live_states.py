"""One vocabulary of live-request states (``agent.transport.live_states``), everywhere.

The states once were strings in five places, and the collector emitted ``timeout``,
which none of them listed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.transport.live_states import AGENT_STATES, CALL_ENDS, FINAL_STATES, STORED_STATES, LiveState
from collector.storage import InvalidArgument, Store
from protos import collector_pb2
from tests.collector.test_metrics import open_request

PROTO = Path(__file__).resolve().parents[2] / "protos" / "collector.proto"


def _request(store: Store) -> str:
    return open_request(store, "ag_states", "states", hostname="h").request_id


def test_every_stored_state_round_trips_and_timeout_is_never_stored(store: Store) -> None:
    for state in STORED_STATES:
        request_id = _request(store)
        assert store.get_live_request(request_id).state == LiveState.QUEUED
        rec = store.advance_live_request(request_id, state, detail=f"to {state}")
        assert rec is not None and rec.state == state and type(rec.state) is str
        assert rec.final == (state in FINAL_STATES)
    with pytest.raises(InvalidArgument, match="'timeout' unknown"):
        store.advance_live_request(_request(store), LiveState.TIMEOUT)


def test_a_final_state_is_final(store: Store) -> None:
    request_id = _request(store)
    assert store.advance_live_request(request_id, LiveState.DENIED) is not None
    assert store.advance_live_request(request_id, LiveState.COLLECTING) is None
    assert store.get_live_request(request_id).state == "denied"


def test_the_sets_are_consistent() -> None:
    assert LiveState.TIMEOUT not in STORED_STATES and LiveState.TIMEOUT in CALL_ENDS
    stored = set(STORED_STATES)
    assert stored.issuperset(FINAL_STATES) and stored.issuperset(AGENT_STATES)
    # "done" is the collector's word (a bundle naming the request was stored), never the agent's.
    assert LiveState.DONE not in AGENT_STATES


def test_the_wire_carries_the_plain_strings() -> None:
    """Old agents and collectors speak strings: an enum member serialises as its string."""
    as_enum = collector_pb2.SnapshotEvent(request_id="r", state=LiveState.TIMEOUT).SerializeToString()
    as_text = collector_pb2.SnapshotEvent(request_id="r", state="timeout").SerializeToString()
    assert as_enum == as_text
    progress = collector_pb2.SnapshotProgress.FromString(
        collector_pb2.SnapshotProgress(state=LiveState.COLLECTING).SerializeToString()
    )
    assert progress.state in AGENT_STATES


def test_the_proto_comment_names_every_state() -> None:
    text = PROTO.read_text("utf-8")
    event = re.search(r"message SnapshotEvent \{(.*?)\n\}", text, re.S)
    assert event is not None
    listed = re.search(r"//\s*(.*)\n\s*string state = 2;", event.group(1))
    assert listed is not None
    assert [w.strip() for w in listed.group(1).split(",")] == [s.value for s in LiveState]
