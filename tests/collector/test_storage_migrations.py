"""Opening the metadata store: migrations, re-opening, refusing newer schemas."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from collector.storage import LATEST_VERSION, SchemaError, Store, StoreError
from collector.storage.schema import schema_version

TABLES = {"tokens", "agents", "bundles", "hosts", "host_agents", "audit_log", "schema_version"}


def test_fresh_database_gets_every_table(store: Store) -> None:
    assert store.schema_version() == LATEST_VERSION
    assert set(inspect(store.engine).get_table_names()) >= TABLES


def test_reopen_is_idempotent_and_keeps_data(store_url: str) -> None:
    with Store.open(store_url) as first:
        _, token = first.create_token("enroll", max_uses=1)
    with Store.open(store_url) as second:
        assert second.schema_version() == LATEST_VERSION
        assert second.get_token(token.id) == token
        with second.engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(schema_version)).scalar_one()
        assert rows == LATEST_VERSION


def test_newer_schema_is_refused_with_a_clear_error(store_url: str) -> None:
    with Store.open(store_url) as store, store.engine.begin() as conn:
        conn.execute(
            schema_version.insert().values(
                version=LATEST_VERSION + 1, applied_at=0, description="from the future"
            )
        )
    with pytest.raises(SchemaError, match="newer than this collector knows") as info:
        Store.open(store_url)
    assert info.value.found == LATEST_VERSION + 1
    assert info.value.known == LATEST_VERSION


def test_concurrent_opens_migrate_once(store_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_one() -> None:
        try:
            barrier.wait()
            Store.open(store_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store.open(store_url) as store, store.engine.connect() as conn:
        versions = conn.execute(select(schema_version.c.version)).scalars().all()
    assert sorted(versions) == list(range(1, LATEST_VERSION + 1))


def test_sqlite_pragmas_are_set(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'm.db'}") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: durable before a receipt
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() > 0


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "mysql://root@localhost/casefile"]
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"SQLite|unsupported"):
        Store.open(url)


def test_unreachable_postgres_names_the_database() -> None:
    url = "postgresql+psycopg://casefile:secret@127.0.0.1:1/nowhere?connect_timeout=2"
    with pytest.raises(StoreError, match="cannot open metadata store") as info:
        Store.open(url)
    assert "secret" not in str(info.value)


def test_steps_4_and_5_bind_existing_case_identities_and_count_skipped_collectors(store_url: str) -> None:
    """A database written by the collector before case bindings and bundle origins: its
    case identities become bindings, its bundles' origin is their uploader's key, and a
    SKIPPED or UNSUPPORTED collector moves from the failed count to the skipped one."""
    import json

    from sqlalchemy import text

    from agent.keys import SigningKey
    from collector.storage.base import make_engine
    from collector.storage.migrations import MIGRATIONS, migrate

    engine = make_engine(store_url)
    assert migrate(engine, "test", MIGRATIONS[:3]) == 3
    key = SigningKey.generate()
    statuses = [{"name": "host", "status": "ok"}, {"name": "cpu", "status": "error"},
                {"name": "logs", "status": "skipped"}, {"name": "fragmentation", "status": "unsupported"}]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tokens (id, kind, case_id, label, secret_sha256, created_at, uses) "
                 "VALUES ('tok_1', 'case', 'SR-3', '', :h, 1, 1)"), {"h": b"\x01" * 32},
        )  # fmt: skip
        conn.execute(
            text("INSERT INTO agents (id, hostname, public_key, fingerprint, created_at, token_id, case_id) "
                 "VALUES ('ag_1', 'db-01', :k, :f, 5, 'tok_1', 'SR-3')"),
            {"k": key.public.raw, "f": key.fingerprint},
        )  # fmt: skip
        conn.execute(
            text("INSERT INTO bundles (bundle_id, agent_id, hostname, case_id, kind, created_at, received_at, size, "
                 "sha256, key_fingerprint, agent_version, file_name, collectors_ok, collectors_failed, blob_key, os, "
                 "manifest_json, facts_pb) VALUES (:id, 'ag_1', 'db-01', 'SR-3', 'one-shot', 1, 1, 10, :sha, :f, "
                 "'0.1', 'b.tar.zst', 1, 3, 'k', '', :m, :pb)"),
            {"id": "a" * 32, "sha": "b" * 64, "f": key.fingerprint, "m": json.dumps({"collectors": statuses}),
             "pb": b""},
        )  # fmt: skip
    engine.dispose()
    with Store.open(store_url) as store:
        assert store.schema_version() == LATEST_VERSION
        assert store.cases_of("ag_1") == ("SR-3",)
        rec = store.get_bundle("a" * 32)
        assert (rec.collectors_ok, rec.collectors_skipped, rec.collectors_failed) == (1, 2, 1)
        assert rec.origin_fingerprint == key.fingerprint and not rec.carried
        # Step 13 lists the cases of the bundles already stored.
        cases, _ = store.list_cases()
        assert [(c.case_id, c.bundle_count, c.last_us, c.hosts) for c in cases] == [("SR-3", 1, 1, ("db-01",))]
        # The same key presenting another case's token is bound to that case as well.
        _, other = store.create_token("case", case_id="SR-4")
        again = store.bind_case_key(key.public.raw, key.fingerprint, "db-01", other.id, "SR-4")
        assert again.id == "ag_1" and store.cases_of("ag_1") == ("SR-3", "SR-4")


def test_step_14_adds_the_doorbells_table_and_keeps_the_channel_rows(store_url: str) -> None:
    """A database of the collector before parked agents: its replicas and channel rows stay,
    and the doorbells table comes empty, with its index on the replica."""
    from sqlalchemy import text

    from collector.storage.base import make_engine
    from collector.storage.migrations import MIGRATIONS, migrate

    engine = make_engine(store_url)
    assert migrate(engine, "test", MIGRATIONS[:13]) == 13
    assert "agent_doorbells" not in inspect(engine).get_table_names()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO collector_replicas (replica_id, started_at, heartbeat_at) VALUES ('r1', 1, 1)"))
        conn.execute(
            text("INSERT INTO agent_channels (agent_id, replica_id, peer, connected_at, heartbeat_at) "
                 "VALUES ('ag_1', 'r1', 'p', 1, 1)")
        )  # fmt: skip
    engine.dispose()
    with Store.open(store_url) as store:
        assert store.schema_version() == LATEST_VERSION >= 14
        assert store.channel_holder("ag_1", 0) is not None
        ins = inspect(store.engine)
        assert [ix["column_names"] for ix in ins.get_indexes("agent_doorbells")] == [["replica_id"]]
        store.write_doorbells("r1", [("ag_2", "p")])
        assert store.agents_with_fresh_channels(["ag_1", "ag_2"], 0) == {"ag_1", "ag_2"}
