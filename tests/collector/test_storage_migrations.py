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
