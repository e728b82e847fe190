"""Bundles and hosts: idempotent inserts, host roll-up, keyset pagination."""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent.keys import SigningKey
from collector.storage import AgentRecord, BundleRecord, Conflict, NotFound, Store
from collector.storage.schema import to_micros

T0 = datetime(2030, 5, 1, 8, 0, tzinfo=UTC)


def make_agent(store: Store, hostname: str = "web-01") -> AgentRecord:
    _, token = store.create_token("enroll")
    key = SigningKey.generate()
    return store.create_agent(key.public.raw, key.fingerprint, hostname, token.id)


def make_bundle(
    agent: AgentRecord,
    *,
    hostname: str | None = None,
    case_id: str | None = None,
    created_at: datetime = T0,
    content: bytes | None = None,
    os: str = "Debian 12",
) -> BundleRecord:
    data = content if content is not None else secrets.token_bytes(16)
    digest = hashlib.sha256(data).hexdigest()
    return BundleRecord(
        bundle_id=secrets.token_hex(16),
        agent_id=agent.id,
        hostname=hostname or agent.hostname,
        case_id=case_id,
        kind="one-shot",
        created_at_us=to_micros(created_at),
        received_at_us=to_micros(created_at + timedelta(seconds=2)),
        size=len(data),
        sha256=digest,
        key_fingerprint=agent.fingerprint,
        agent_version="0.1.0",
        file_name="casefile-x.tar.zst",
        collectors_ok=9,
        collectors_failed=1,
        blob_key=digest,
        os=os,
    )


def test_insert_get_and_content(store: Store) -> None:
    rec = make_bundle(make_agent(store), case_id="SR-1")
    stored, inserted = store.insert_bundle(rec, facts_pb=b"\x08\x01", manifest_json='{"a": 1}')
    assert inserted and stored == rec
    assert store.get_bundle(rec.bundle_id) == rec
    assert store.get_bundle_content(rec.bundle_id) == (b"\x08\x01", '{"a": 1}')
    with pytest.raises(NotFound):
        store.get_bundle("0" * 32)
    with pytest.raises(NotFound):
        store.get_bundle_content("0" * 32)


def test_times_are_integer_micros_with_utc_views(store: Store) -> None:
    plus_two = datetime(2030, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    rec = make_bundle(make_agent(store), created_at=plus_two)
    stored, _ = store.insert_bundle(rec, facts_pb=b"", manifest_json="{}")
    assert stored.created_at_us == to_micros(plus_two)
    assert stored.created_at == plus_two and stored.created_at.utcoffset() == timedelta(0)
    assert store.get_bundle(rec.bundle_id).created_at == plus_two
    with pytest.raises(ValueError, match="naive"):
        to_micros(datetime(2030, 1, 1))


def test_insert_is_idempotent_and_conflicts_on_other_content(store: Store) -> None:
    rec = make_bundle(make_agent(store), case_id="")
    first, inserted = store.insert_bundle(rec, facts_pb=b"1", manifest_json="{}")
    assert inserted and first.case_id is None
    again, inserted = store.insert_bundle(rec, facts_pb=b"1", manifest_json="{}")
    assert not inserted and again == first
    other = replace(rec, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(Conflict, match=rec.bundle_id):
        store.insert_bundle(other, facts_pb=b"2", manifest_json="{}")
    host, _ = store.list_hosts()
    assert host[0].bundle_count == 1


def test_insert_refuses_bad_records(store: Store) -> None:
    rec = make_bundle(make_agent(store))
    with pytest.raises(ValueError, match="bundle id"):
        store.insert_bundle(replace(rec, bundle_id="../etc"), facts_pb=b"", manifest_json="")
    with pytest.raises(ValueError, match="sha256"):
        store.insert_bundle(replace(rec, sha256="xyz"), facts_pb=b"", manifest_json="")
    with pytest.raises(NotFound, match="ag_0000000000000000"):
        store.insert_bundle(
            replace(rec, agent_id="ag_0000000000000000"), facts_pb=b"", manifest_json=""
        )


@pytest.mark.parametrize("same_content", [True, False])
def test_concurrent_inserts_of_one_id(store: Store, same_content: bool) -> None:
    agent = make_agent(store)
    base = make_bundle(agent)
    workers = 8
    variants = [
        base if same_content else replace(base, sha256=hashlib.sha256(bytes([i])).hexdigest())
        for i in range(workers)
    ]
    barrier = threading.Barrier(workers)
    outcomes: list[tuple[str, BundleRecord | None]] = []
    lock = threading.Lock()

    def insert(rec: BundleRecord) -> None:
        barrier.wait()
        try:
            stored, inserted = store.insert_bundle(rec, facts_pb=b"", manifest_json="{}")
            outcome: tuple[str, BundleRecord | None] = (
                "inserted" if inserted else "existing",
                stored,
            )
        except Conflict:
            outcome = ("conflict", None)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=insert, args=(v,)) for v in variants]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = sorted(kind for kind, _ in outcomes)
    winner = store.get_bundle(base.bundle_id)
    if same_content:
        assert kinds == ["existing"] * (workers - 1) + ["inserted"]
        assert all(stored == winner for _, stored in outcomes)
    else:
        assert kinds == ["conflict"] * (workers - 1) + ["inserted"]
    hosts, _ = store.list_hosts()
    assert hosts[0].bundle_count == 1


def test_host_rollup_whatever_the_arrival_order(store: Store) -> None:
    a1, a2 = make_agent(store, "web-01"), make_agent(store, "web-01")
    newest = make_bundle(a2, created_at=T0 + timedelta(hours=2), os="Debian 13")
    oldest = make_bundle(a1, created_at=T0 - timedelta(hours=1), os="Debian 11")
    middle = make_bundle(a1, created_at=T0, os="Debian 12")
    for rec in (middle, newest, oldest):
        store.insert_bundle(rec, facts_pb=b"", manifest_json="{}")
    (host,), cursor = store.list_hosts()
    assert cursor is None
    assert host.hostname == "web-01" and host.bundle_count == 3
    assert host.first_seen == oldest.created_at and host.last_seen == newest.created_at
    assert host.last_bundle_id == newest.bundle_id and host.os == "Debian 13"
    assert host.agent_ids == tuple(sorted([a1.id, a2.id]))


def test_list_hosts_pages_by_name(store: Store) -> None:
    agent = make_agent(store)
    names = [f"host-{i:03d}" for i in range(23)]
    for name in random.Random(7).sample(names, len(names)):
        store.insert_bundle(make_bundle(agent, hostname=name), facts_pb=b"", manifest_json="{}")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = store.list_hosts(page_size=5, cursor=cursor)
        assert len(page) <= 5
        seen += [h.hostname for h in page]
        if cursor is None:
            break
    assert seen == names
    assert all(h.agent_ids == (agent.id,) for h in store.list_hosts(1000)[0])


@pytest.fixture
def corpus(store: Store) -> list[BundleRecord]:
    """~250 bundles over 3 hosts, 2 agents and 3 cases, many sharing a timestamp."""
    rng = random.Random(42)
    agents = [make_agent(store, "a"), make_agent(store, "b")]
    made = []
    for _ in range(250):
        rec = make_bundle(
            rng.choice(agents),
            hostname=rng.choice(["alpha", "beta", "gamma"]),
            case_id=rng.choice([None, "SR-1", "SR-2"]),
            # 40 distinct instants for 250 rows: plenty of ties on created_at.
            created_at=T0 + timedelta(minutes=rng.randrange(40)),
        )
        store.insert_bundle(rec, facts_pb=b"", manifest_json="{}")
        made.append(rec)
    return made


def walk(store: Store, page_size: int, **filters: object) -> list[BundleRecord]:
    got: list[BundleRecord] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = store.list_bundles(page_size=page_size, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages += 1
        assert len(page) <= page_size
        got += page
        if cursor is None:
            return got
        assert len(page) == page_size and pages < 1000


def newest_first(rows: list[BundleRecord]) -> list[BundleRecord]:
    return sorted(rows, key=lambda r: (r.created_at, r.bundle_id), reverse=True)


WALKS: list[dict[str, object]] = [
    {},
    {"hostname": "beta"},
    {"case_id": "SR-2"},
    {"hostname": "gamma", "case_id": "SR-1"},
    {"since": T0 + timedelta(minutes=10), "until": T0 + timedelta(minutes=25)},
    {"hostname": "alpha", "since": T0 + timedelta(minutes=30)},
    {"hostname": "nowhere"},
]


def _keep(r: BundleRecord, filters: dict[str, object]) -> bool:
    since, until = filters.get("since"), filters.get("until")
    assert since is None or isinstance(since, datetime)
    assert until is None or isinstance(until, datetime)
    return (
        filters.get("hostname", r.hostname) == r.hostname
        and filters.get("case_id", r.case_id) == r.case_id
        and filters.get("agent_id", r.agent_id) == r.agent_id
        and (since is None or r.created_at >= since)
        and (until is None or r.created_at < until)
    )


def test_cursor_walks_have_no_gaps_or_duplicates(store: Store, corpus: list[BundleRecord]) -> None:
    # One corpus, many walks: building it is the slow part.
    walks: list[dict[str, object]] = [*WALKS, {"agent_id": corpus[0].agent_id}]
    for filters in walks:
        expected = newest_first([r for r in corpus if _keep(r, filters)])
        for page_size in (1, 7, 100, 1000):
            assert walk(store, page_size, **filters) == expected, (filters, page_size)


def test_page_size_clamp_and_cursor_kinds(store: Store, corpus: list[BundleRecord]) -> None:
    page, cursor = store.list_bundles(page_size=0)
    assert len(page) == 1 and cursor is not None
    page, cursor = store.list_bundles(page_size=10**6)
    assert len(page) == 250 and cursor is None
    _, bundle_cursor = store.list_bundles(page_size=1)
    _, host_cursor = store.list_hosts(page_size=1)
    assert bundle_cursor and host_cursor
    with pytest.raises(ValueError, match="invalid page token"):
        store.list_hosts(cursor=bundle_cursor)
    with pytest.raises(ValueError, match="invalid page token"):
        store.list_bundles(cursor=host_cursor)
    assert store.list_bundles(cursor="")[0] == store.list_bundles()[0]


@pytest.mark.parametrize("cursor", ["!!!", "Zm9v", "YjE6MTIzOnh5eg", "aDE6aG9zdA", "a" * 5000, "é"])
def test_malformed_cursor(store: Store, cursor: str) -> None:
    with pytest.raises(ValueError, match="invalid page token"):
        store.list_bundles(cursor=cursor)
