"""Agents and the audit log."""

from __future__ import annotations

import threading

import pytest

from agent.keys import SigningKey
from collector.storage import Conflict, NotFound, Store


def test_create_and_look_up(store: Store) -> None:
    _, token = store.create_token("enroll", max_uses=1)
    key = SigningKey.generate()
    agent = store.create_agent(key.public.raw, key.fingerprint, "web-01", token.id)
    assert agent.id.startswith("ag_") and len(agent.id) == 19
    assert agent.public_key == key.public.raw and agent.case_id is None
    assert agent.created_at.tzinfo is not None and agent.last_seen_at is None
    assert store.get_agent(agent.id) == agent
    assert store.get_agent_by_fingerprint(key.fingerprint) == agent
    store.touch_agent(agent.id)
    assert store.get_agent(agent.id).last_seen_at is not None


def test_same_key_again_returns_the_same_agent(store: Store) -> None:
    _, token = store.create_token("case", case_id="SR-7")
    key = SigningKey.generate()
    first = store.create_agent(key.public.raw, key.fingerprint, "db-01", token.id, "SR-7")
    again = store.create_agent(key.public.raw, key.fingerprint, "db-01", token.id, "SR-7")
    assert again == first
    with pytest.raises(Conflict, match="different binding"):
        store.create_agent(key.public.raw, key.fingerprint, "db-01", token.id, "SR-8")
    with pytest.raises(Conflict):
        store.create_agent(key.public.raw, key.fingerprint, "db-01", token.id)


def test_concurrent_enrollment_of_one_key_makes_one_agent(store: Store) -> None:
    _, token = store.create_token("enroll")
    key = SigningKey.generate()
    barrier = threading.Barrier(6)
    ids: list[str] = []

    def enroll() -> None:
        barrier.wait()
        ids.append(store.create_agent(key.public.raw, key.fingerprint, "h", token.id).id)

    threads = [threading.Thread(target=enroll) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 6 and len(set(ids)) == 1


def test_bad_agent_input(store: Store) -> None:
    _, token = store.create_token("enroll")
    key, other = SigningKey.generate(), SigningKey.generate()
    with pytest.raises(ValueError, match="does not match"):
        store.create_agent(key.public.raw, other.fingerprint, "h", token.id)
    with pytest.raises(ValueError, match="32 raw bytes"):
        store.create_agent(b"short", key.fingerprint, "h", token.id)
    with pytest.raises(ValueError, match="hostname"):
        store.create_agent(key.public.raw, key.fingerprint, "", token.id)
    with pytest.raises(NotFound, match="tok_0000000000"):
        store.create_agent(key.public.raw, key.fingerprint, "h", "tok_0000000000")
    with pytest.raises(NotFound):
        store.get_agent("ag_0000000000000000")
    with pytest.raises(NotFound):
        store.get_agent_by_fingerprint(key.fingerprint)
    with pytest.raises(NotFound):
        store.touch_agent("ag_0000000000000000")


def test_audit_round_trip_filters_and_paging(store: Store) -> None:
    for i in range(5):
        store.audit(
            actor="tok_aaaaaaaaaa",
            actor_label="alice",
            role="engineer",
            action="query.list_bundles" if i % 2 else "query.get_bundle",
            target=f"bundle-{i}",
            peer="ipv4:127.0.0.1:5000",
            outcome="ok" if i < 4 else "denied",
        )
    store.audit(actor="tok_bbbbbbbbbb", action="tokens.create", outcome="error", detail="boom")
    entries = store.list_audit()
    assert [e.target for e in entries] == [
        "",
        "bundle-4",
        "bundle-3",
        "bundle-2",
        "bundle-1",
        "bundle-0",
    ]
    assert [e.id for e in entries] == sorted((e.id for e in entries), reverse=True)
    assert entries[1].outcome == "denied" and entries[0].detail == "boom"
    assert all(e.at.tzinfo is not None for e in entries)
    assert len(store.list_audit(actor="tok_aaaaaaaaaa")) == 5
    assert [e.target for e in store.list_audit(action="query.list_bundles")] == [
        "bundle-3",
        "bundle-1",
    ]
    assert [e.target for e in store.list_audit(outcome="denied")] == ["bundle-4"]
    older = store.list_audit(2, before_id=entries[1].id)
    assert [e.target for e in older] == ["bundle-3", "bundle-2"]


def test_audit_never_keeps_a_token_and_checks_outcome(store: Store) -> None:
    plaintext, rec = store.create_token("engineer", role="viewer")
    entry = store.audit(
        actor=rec.id,
        action="auth",
        outcome="denied",
        detail=f"client sent {plaintext} in a field",
        target=plaintext,
    )
    assert plaintext not in repr(entry)
    assert "[redacted token]" in entry.detail and entry.actor == rec.id
    with pytest.raises(ValueError, match="outcome"):
        store.audit(actor=rec.id, action="auth", outcome="maybe")
