"""The metric filter's plan: a query naming filesystem and bundle-wide fields walks
``bundle_metrics`` instead of ``fs_metrics``. On a seeded random fleet, in both databases,
it returns exactly the rows, in the same order, as the statement it replaced (joined and
ordered on ``fs_metrics``), which this module rebuilds from the same parsed condition."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Select, insert, select

from collector.query_lang import FIELDS, compile_query, parse_query
from collector.storage import Store
from collector.storage.findings import bundle_metrics, fs_metrics

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
_NOW_US = int(NOW.timestamp() * 1_000_000)
_HOUR_US = 3_600_000_000
_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_M, _F = bundle_metrics.c, fs_metrics.c


def _fleet(seed: int, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` bundles over ten days, some at the same microsecond, 0-3 filesystems each."""
    rng = random.Random(seed)
    rows, fss = [], []
    for i in range(n):
        at = _NOW_US - rng.randrange(240) * _HOUR_US  # ~n/240 bundles share each instant

        def val(lo: float, hi: float) -> float | None:
            return None if rng.random() < 0.1 else round(rng.uniform(lo, hi), 1)

        bid = f"{rng.getrandbits(64):032x}"
        rows.append(
            {
                "bundle_id": bid,
                "hostname": f"h{rng.randrange(6)}",
                "case_id": rng.choice([None, "SR-1", "SR-2"]),
                "agent_id": f"ag{i}",
                "created_at": at,
                "cpu_percent": val(0, 100),
                "memory_percent": val(0, 100),
                "swap_percent": val(0, 30),
                "load1": val(0, 8),
                "load5": val(0, 8),
                "load15": val(0, 8),
                "tcp_retrans_pct": val(0, 3),
                "clock_ntp_offset_ms": val(-900, 900),
                "clock_collector_offset_ms": val(-50, 50),
            }
        )
        for mount in rng.sample(["/", "/var", "/home"], rng.randrange(4)):
            fss.append(
                {
                    "bundle_id": bid,
                    "created_at": at,
                    "mountpoint": mount,
                    "fstype": rng.choice(["ext4", "xfs"]),
                    "use_pct": val(0, 100),
                    "fragmented_files_pct": val(0, 50),
                    "fragmented_bytes_pct": val(0, 80),
                    "fragments_p95": val(1, 9),
                }
            )
    return rows, fss


@pytest.fixture
def fleet_store(store: Store) -> Iterator[Store]:
    rows, fss = _fleet(seed=18, n=600)
    with store.engine.begin() as conn:
        conn.execute(insert(bundle_metrics), rows)
        conn.execute(insert(fs_metrics), fss)
    yield store


def _previous(query: str, limit: int) -> Select[Any]:
    """The statement compile_query built before: joined, timed and ordered on fs_metrics."""
    p = parse_query(query, now=NOW)
    t = fs_metrics.c if p.uses_fs else _M
    cols: list[Any] = [_M.bundle_id, _M.hostname, _M.case_id, _M.agent_id, _M.created_at]
    source: Any = bundle_metrics
    if p.uses_fs:
        cols.append(_F.mountpoint)
        source = bundle_metrics.join(fs_metrics, _F.bundle_id == _M.bundle_id)
    cols.extend(FIELDS[f].column().label(f"v{i}") for i, f in enumerate(p.fields) if FIELDS[f].numeric)
    conds = [
        c
        for c in (p.condition, *(t.created_at >= at if w == "since" else t.created_at < at for w, at in p.times))
        if c is not None
    ]
    return select(*cols).select_from(source).where(*conds).order_by(t.created_at.desc(), t.bundle_id).limit(limit)


_NUMERIC_FS = sorted(f for f, d in FIELDS.items() if d.fs and d.numeric)
_NUMERIC_BUNDLE = sorted(f for f, d in FIELDS.items() if not d.fs and d.numeric)
_term = st.one_of(
    st.tuples(
        st.sampled_from(_NUMERIC_FS + _NUMERIC_BUNDLE),
        st.sampled_from([">", ">=", "<", "<=", "!="]),
        st.integers(-100, 100),
    ).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
    st.sampled_from(
        [
            "fs.mount = '/var'",
            "fs.mount != '/'",
            "fs.type = 'xfs'",
            "host = 'h1'",
            "host != 'h2'",
            "case = 'SR-1'",
            "agent = 'ag7'",
        ]
    ),
)
_expr = st.recursive(
    _term,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda e: f"not {e}"),
    ),
    max_leaves=4,
)
_when = st.sampled_from(["", " since 3d", " since 9d until 2d", " until 5d", " since 2026-12-03T00:00Z"])


def _key(row: Any) -> tuple[Any, ...]:
    return (row.created_at, row.bundle_id)


@_SETTINGS
@given(expr=_expr, when=_when, limit=st.sampled_from([1, 7, 50, 1000]))
def test_same_rows_in_the_same_order_as_before(fleet_store: Store, expr: str, when: str, limit: int) -> None:
    query = expr + when
    new = fleet_store.run_metric_query(compile_query(query, now=NOW, limit=limit).statement)
    old = fleet_store.run_metric_query(_previous(query, limit))
    # The bundles, newest first, are the same sequence; the previous statement left the
    # order of one bundle's filesystems open, so rows compare as sets per bundle, all
    # bundles but a page's last one (which a limit may cut between its filesystems).
    assert [(r["created_at"], r["bundle_id"]) for r in new] == [(r["created_at"], r["bundle_id"]) for r in old]
    last = (new[-1]["bundle_id"],) if new and len(new) == limit else ()

    def rows(got: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(tuple(sorted(r.items(), key=str)) for r in got if r["bundle_id"] not in last)

    assert rows(new) == rows(old)


def test_the_walk_follows_the_fields(fleet_store: Store) -> None:
    both = compile_query("fs.fragmented_bytes_pct > 30 and memory.percent > 90 since 7d", now=NOW)
    fs_only = compile_query("fs.mount = '/var' and fs.fragmented_bytes_pct > 30 since 7d", now=NOW)
    assert "bundle_metrics.created_at DESC" in str(both.statement)
    assert "fs_metrics.created_at DESC" in str(fs_only.statement)
    a_page = fleet_store.run_metric_query(both.statement)
    assert a_page, "the seeded fleet has matches for the two-metric filter"
    assert all(r["v0"] > 30 and r["v1"] > 90 for r in a_page)
