"""Tokens: issuing, authenticating, expiry, revocation and atomic use counts."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from collector.storage import AuthError, NotFound, Store
from collector.storage.schema import tokens

TOKEN_RE = re.compile(r"cf[ecu]_[A-Za-z0-9_-]{43}")


class Clock:
    """A hand-moved clock, so expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed_store(store_url: str, clock: Clock) -> Iterator[Store]:
    with Store.open(store_url, clock=clock) as opened:
        yield opened


@pytest.mark.parametrize(
    ("kind", "extra", "prefix"),
    [
        ("enroll", {}, "cfe_"),
        ("case", {"case_id": "SR-1234"}, "cfc_"),
        ("engineer", {"role": "viewer"}, "cfu_"),
    ],
)
def test_create_returns_plaintext_once_and_stores_only_its_hash(
    store: Store, kind: str, extra: dict[str, str], prefix: str
) -> None:
    plaintext, rec = store.create_token(kind, label="for tests", **extra)  # type: ignore[arg-type]
    assert TOKEN_RE.fullmatch(plaintext) and plaintext.startswith(prefix)
    assert re.fullmatch(r"tok_[0-9a-f]{10}", rec.id)
    assert rec.kind == kind and rec.uses == 0 and rec.label == "for tests"
    assert plaintext not in repr(rec)
    with store.engine.connect() as conn:
        stored = conn.execute(select(tokens.c.secret_sha256).where(tokens.c.id == rec.id)).one()
    assert bytes(stored[0]) == hashlib.sha256(plaintext.encode()).digest()
    assert store.authenticate(plaintext, {kind}) == rec


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("engineer", {}, "need a role"),
        ("engineer", {"role": "root"}, "need a role"),
        ("enroll", {"role": "admin"}, "role is only for engineer"),
        ("case", {}, "case tokens need a case_id"),
        ("enroll", {"case_id": "SR-1"}, "case_id is only for case"),
        ("enroll", {"ttl": timedelta(0)}, "ttl must be positive"),
        ("enroll", {"max_uses": 0}, "max_uses must be at least 1"),
        ("robot", {}, "kind 'robot' unknown"),
    ],
)
def test_invalid_combinations_are_refused(
    store: Store, kind: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.create_token(kind, **kwargs)  # type: ignore[arg-type]


def test_authenticate_refusals(timed_store: Store, clock: Clock) -> None:
    store = timed_store
    enroll, enroll_rec = store.create_token("enroll", ttl=timedelta(hours=24), max_uses=1)
    for bogus in ["", "nonsense", "cfe_" + "A" * 43, enroll + "x"]:
        with pytest.raises(AuthError) as info:
            store.authenticate(bogus, {"enroll"})
        assert info.value.reason == "unknown" and info.value.token_id is None

    with pytest.raises(AuthError) as info:
        store.authenticate(enroll, {"engineer", "case"})
    assert info.value.reason == "wrong kind" and info.value.token_id == enroll_rec.id

    clock.now += timedelta(hours=24)
    with pytest.raises(AuthError) as info:
        store.authenticate(enroll, {"enroll"})
    assert info.value.reason == "expired"
    with pytest.raises(AuthError, match="expired"):
        store.consume_token(enroll_rec.id)
    clock.now -= timedelta(seconds=1)
    assert store.authenticate(enroll, {"enroll"}).id == enroll_rec.id

    assert store.consume_token(enroll_rec.id).uses == 1
    with pytest.raises(AuthError) as info:
        store.authenticate(enroll, {"enroll"})
    assert info.value.reason == "used up"
    with pytest.raises(AuthError, match="used up"):
        store.consume_token(enroll_rec.id)


def test_revoke(timed_store: Store, clock: Clock) -> None:
    store = timed_store
    plaintext, rec = store.create_token("engineer", role="admin")
    revoked = store.revoke_token(rec.id)
    assert revoked.revoked_at == clock.now
    clock.now += timedelta(minutes=5)
    assert store.revoke_token(rec.id).revoked_at == revoked.revoked_at
    with pytest.raises(AuthError) as info:
        store.authenticate(plaintext, {"engineer"})
    assert info.value.reason == "revoked"
    with pytest.raises(AuthError, match="revoked"):
        store.consume_token(rec.id)
    with pytest.raises(NotFound):
        store.revoke_token("tok_0000000000")
    with pytest.raises(AuthError, match="unknown"):
        store.consume_token("tok_0000000000")


def test_unlimited_tokens_count_uses(store: Store) -> None:
    _, rec = store.create_token("engineer", role="engineer")
    for expected in range(1, 6):
        assert store.consume_token(rec.id).uses == expected


def test_list_tokens(store: Store) -> None:
    made = [
        store.create_token("enroll", max_uses=1)[1],
        store.create_token("case", case_id="SR-9")[1],
        store.create_token("engineer", role="viewer")[1],
    ]
    listed = store.list_tokens()
    assert sorted(t.id for t in listed) == sorted(t.id for t in made)
    assert {t.kind for t in listed} == {"enroll", "case", "engineer"}


def test_concurrent_consumption_never_exceeds_max_uses(store: Store) -> None:
    _, rec = store.create_token("enroll", max_uses=3)
    workers = 12
    barrier = threading.Barrier(workers)
    results: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        barrier.wait()
        try:
            store.consume_token(rec.id)
            outcome = "ok"
        except AuthError as exc:
            outcome = exc.reason
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=consume) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] * 3 + ["used up"] * (workers - 3)
    assert store.get_token(rec.id).uses == 3
