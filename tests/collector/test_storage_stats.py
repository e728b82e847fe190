"""SQLite planner statistics: analyzed at open and as bundles arrive, seen by every connection."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection

from collector.storage import Store, stats
from collector.storage.schema import audit_log, bundles, to_micros
from tests.collector.test_storage_bundles import T0, make_agent, make_bundle

AGENT_AND_CASE = (
    "EXPLAIN QUERY PLAN SELECT bundle_id FROM bundles WHERE agent_id = ? AND case_id = ? "
    "ORDER BY created_at DESC, bundle_id DESC LIMIT 51"
)


def fill(store: Store, busy: int) -> tuple[str, str]:
    """A busy agent with ``busy`` scheduled bundles, a quiet one with 20 cases of 3.

    Returns the busy agent's id and a case: a filter on both matches nothing, and is
    cheap only if the planner scans the case's index entries, not the agent's.
    """
    loud, quiet = make_agent(store, "busy-01"), make_agent(store, "quiet-01")
    rows = []
    for i in range(busy + 60):
        rec = make_bundle(loud if i < busy else quiet, created_at=T0 + timedelta(seconds=i))
        rows.append(
            {
                **{c.name: getattr(rec, c.name, None) for c in bundles.c},
                "case_id": None if i < busy else f"SR-{i % 20}",
                "created_at": to_micros(rec.created_at),
                "received_at": to_micros(rec.received_at),
                "manifest_json": "{}",
                "facts_pb": b"",
            }
        )
    with store.engine.begin() as conn:
        conn.execute(bundles.insert(), rows)
    return loud.id, "SR-9"


def analyzed_rows(conn: Connection) -> int | None:
    if conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").first() is None:
        return None
    found = conn.exec_driver_sql(
        "SELECT stat FROM sqlite_stat1 WHERE tbl = 'bundles' AND idx = 'ix_bundles_page'"
    ).scalar()
    return None if found is None else int(str(found).split()[0])


def plan(store: Store, agent_id: str, case_id: str) -> str:
    with store.engine.connect() as conn:
        return " ".join(str(r[-1]) for r in conn.exec_driver_sql(AGENT_AND_CASE, (agent_id, case_id)))


def test_open_analyzes_a_grown_table_and_the_case_index_wins(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with Store.open(url) as store:
        agent_id, case_id = fill(store, busy=3000)
        with store.engine.connect() as conn:
            assert analyzed_rows(conn) is None
    with Store.open(url) as store:
        with store.engine.connect() as conn:
            assert analyzed_rows(conn) == 3060
        assert "ix_bundles_case_page" in plan(store, agent_id, case_id)
        assert store.list_bundles(agent_id=agent_id, case_id=case_id) == ([], None)
        assert store.refresh_statistics() is False  # fresh: left alone


def test_connections_already_pooled_see_the_new_statistics(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'm.db'}") as store:
        agent_id, case_id = fill(store, busy=3000)
        # Two connections that loaded no statistics go back to the pool; ANALYZE
        # runs on one of them.
        with store.engine.connect() as one, store.engine.connect() as two:
            for conn in (one, two):
                conn.exec_driver_sql(AGENT_AND_CASE, (agent_id, case_id)).all()
        assert store.refresh_statistics() is True
        with store.engine.connect() as one, store.engine.connect() as two:
            for conn in (one, two):
                used = conn.exec_driver_sql(AGENT_AND_CASE, (agent_id, case_id)).all()
                assert "ix_bundles_case_page" in str(used[-1][-1])


def test_inserts_refresh_the_statistics_at_each_tenfold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats, "ANALYZE_MIN_ROWS", 4)
    with Store.open(f"sqlite:///{tmp_path / 'm.db'}") as store:
        agent = make_agent(store)
        seen = []
        for i in range(45):
            store.insert_bundle(
                make_bundle(agent, created_at=T0 + timedelta(seconds=i)), facts_pb=b"", manifest_json="{}"
            )
            with store.engine.connect() as conn:
                seen.append(analyzed_rows(conn))
    assert seen[:3] == [None] * 3
    assert seen[3:39] == [4] * 36  # analyzed at 4 rows, again at 40
    assert seen[39:] == [40] * 6


def test_small_tables_and_postgres_are_not_analyzed(store: Store) -> None:
    fill(store, busy=10)
    assert store.refresh_statistics() is False


ACTOR_AND_ACTION = (
    "EXPLAIN QUERY PLAN SELECT id FROM audit_log WHERE actor = ? AND action = ? ORDER BY id DESC LIMIT 51"
)


def test_the_audit_log_is_analyzed_too_and_the_actor_index_wins(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with Store.open(url) as store:
        # One busy action, 300 engineers: "this engineer's listings" is narrow by actor.
        rows = [
            {"at": i, "actor": f"tok{i % 300:04d}", "actor_label": "", "role": "engineer", "action": "bundle.list",
             "target": "", "peer": "", "outcome": "ok", "detail": ""}
            for i in range(3000)
        ]  # fmt: skip
        with store.engine.begin() as conn:
            conn.execute(audit_log.insert(), rows)
    with Store.open(url) as store, store.engine.connect() as conn:
        found = conn.exec_driver_sql("SELECT stat FROM sqlite_stat1 WHERE tbl = 'audit_log'").scalars().all()
        assert found and all(str(s).split()[0] == "3000" for s in found)
        used = " ".join(str(r[-1]) for r in conn.exec_driver_sql(ACTOR_AND_ACTION, ("tok0007", "bundle.list")))
        assert "ix_audit_log_actor" in used, used
        assert len(store.list_audit(100, actor="tok0007", action="bundle.list")) == 10


def test_audit_entries_refresh_the_statistics_as_they_arrive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "ANALYZE_MIN_ROWS", 4)
    with Store.open(f"sqlite:///{tmp_path / 'm.db'}") as store:
        for i in range(5):
            store.audit(actor=f"tok{i}", action="bundle.list", outcome="ok")
        with store.engine.connect() as conn:
            found = conn.exec_driver_sql("SELECT stat FROM sqlite_stat1 WHERE tbl = 'audit_log'").scalars().all()
    assert found and {str(s).split()[0] for s in found} == {"4"}
