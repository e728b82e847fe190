"""Hunts on the store (SQLite and PostgreSQL): labels, selection, limits, expiry.

A real store and the real in-process router with no agent connected: every selected
agent is offline, so each request stays queued — what a hunt must leave for later.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest

from agent.keys import SigningKey
from collector import hunts
from collector.edge import Rejected
from collector.live import LiveRouter
from collector.storage import AgentRecord, Store, TokenRecord
from collector.storage.errors import InvalidArgument
from protos import collector_pb2


def _agent(store: Store, hostname: str, labels: dict[str, str], case_id: str | None = None) -> AgentRecord:
    key = SigningKey.generate()
    agent = store.create_agent(key.public.raw, key.fingerprint, hostname, None, case_id)
    store.set_agent_labels(agent.id, labels)
    return agent


def _engineer(store: Store, label: str = "alice") -> TokenRecord:
    _, rec = store.create_token("engineer", role="engineer", label=label, ttl=dt.timedelta(hours=1))
    return rec


def _create(store: Store, token: TokenRecord, **spec: object) -> collector_pb2.HuntStatus:
    async def run() -> collector_pb2.HuntStatus:
        router = LiveRouter(store)
        hunt = await hunts.create_hunt(store, router, token, collector_pb2.HuntSpec(**spec), "test")  # type: ignore[arg-type]
        return await hunts.hunt_status(store, router, hunt.hunt_id)

    return asyncio.run(run())


def test_labels_select_enrolled_agents_only(store: Store) -> None:
    web1 = _agent(store, "web-1", {"role": "web", "site": "paris"})
    web2 = _agent(store, "web-2", {"role": "web", "site": "lyon"})
    _agent(store, "db-1", {"role": "db", "site": "paris"})
    _agent(store, "web-case", {"role": "web"}, case_id="SR-1")  # a case-token identity: never asked
    ids = {a.id for a in store.enrolled_agents_with({"role": "web"}, 100)}
    assert ids == {web1.id, web2.id}
    assert [a.id for a in store.enrolled_agents_with({"role": "web", "site": "paris"}, 100)] == [web1.id]
    store.set_agent_labels(web1.id, {"role": "cache"})  # enrolling again states them anew
    assert store.agent_labels([web1.id]) == {web1.id: {"role": "cache"}}


def test_a_hunt_queues_one_request_per_selected_agent(store: Store) -> None:
    a = _agent(store, "web-1", {"role": "web"})
    b = _agent(store, "web-2", {"role": "web"})
    _agent(store, "api-1", {"role": "web"})
    token = _engineer(store)
    status = _create(store, token, labels=["role=web"], host_pattern="web-*", case_id="SR-1234", reason="slow")
    assert status.selector == "role=web host=web-*" and status.case_id == "SR-1234"
    assert [(h.agent_id, h.state) for h in status.hosts] == [(a.id, "offline"), (b.id, "offline")]
    assert dict(status.counts) == {"offline": 2}
    reqs = store.hunt_live_requests(status.hunt_id)
    assert {r.state for r in reqs} == {"queued"} and {r.agent_id for r in reqs} == {a.id, b.id}
    assert reqs[0].reason == "[SR-1234] slow" and reqs[0].scopes == ("facts",)
    assert store.queued_live_requests(a.id)[0].request_id in {r.request_id for r in reqs}  # drained on reconnect
    audit = store.list_audit(10, action="hunt.request")
    assert sorted(r.target for r in audit) == sorted([a.id, b.id])
    assert all(status.hunt_id in r.detail and "queued (offline)" in r.detail for r in audit)


def test_status_expires_requests_queued_past_the_hunt(store: Store) -> None:
    _agent(store, "web-1", {"role": "web"})
    token = _engineer(store)
    status = _create(store, token, labels=["role=web"], case_id="SR-1", expires_s=1)
    (rec,) = store.hunt_live_requests(status.hunt_id)
    assert hunts.shown_state(rec, False, rec.expires_at_us + 1) == "expired"

    async def later() -> collector_pb2.HuntStatus:
        await asyncio.sleep(1.1)  # the hunt's own expiry
        return await hunts.hunt_status(store, LiveRouter(store), status.hunt_id)

    after = asyncio.run(later())
    assert [h.state for h in after.hosts] == ["expired"]
    assert store.hunt_live_requests(status.hunt_id)[0].state == "expired"
    assert store.queued_live_requests(rec.agent_id) == []


def test_too_many_hosts_is_refused_with_the_count(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hunts, "MAX_HOSTS", 2)
    for i in range(3):
        _agent(store, f"web-{i}", {"role": "web"})
    token = _engineer(store)
    with pytest.raises(Rejected) as info:
        _create(store, token, labels=["role=web"], case_id="SR-1")
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "matches 3 agents; a hunt reaches at most 2" in str(info.value)
    assert store.hunts_created_since(token.id, 0) == 0


def test_hourly_limit_counts_this_tokens_hunts(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hunts, "HUNTS_PER_HOUR", 2)
    _agent(store, "web-1", {"role": "web"})
    alice, bob = _engineer(store, "alice"), _engineer(store, "bob")
    for _ in range(2):
        _create(store, alice, labels=["role=web"], case_id="SR-1")
    with pytest.raises(Rejected) as info:
        _create(store, alice, labels=["role=web"], case_id="SR-1")
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    _create(store, bob, labels=["role=web"], case_id="SR-1")  # another engineer is not held back


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"case_id": "SR-1"}, "a hunt needs --label"),
        ({"labels": ["role=web"], "case_id": ""}, "case '' is empty"),
        ({"labels": ["role=web"], "case_id": "SR\x1b[2J"}, "control or format character"),
        ({"labels": ["role=web"], "case_id": "SR-1", "scopes": ["shell"]}, "unknown scope(s) shell"),
        ({"labels": ["role=web"], "case_id": "SR-1", "expires_s": 8 * 86400}, "expires_s must be"),
        ({"host_pattern": "web\u202e*", "case_id": "SR-1"}, "host pattern"),
    ],
)
def test_bad_specs_are_refused_before_anything_is_written(store: Store, spec: dict[str, object], message: str) -> None:
    _agent(store, "web-1", {"role": "web"})
    token = _engineer(store)
    with pytest.raises(InvalidArgument) as info:
        _create(store, token, **spec)
    assert message in str(info.value)
    assert store.hunts_created_since(token.id, 0) == 0
