"""The metric filter language: parse errors with positions, results against a Python
oracle over real stored rows, and values and names from the query never reaching SQL text."""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, inspect

from collector.query_lang import FIELDS, MAX_QUERY, QueryError, compile_query
from collector.storage import Store
from collector.storage.findings import bundle_metrics, fs_metrics

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
_DAY_US = 86_400_000_000
_NOW_US = int(NOW.timestamp() * 1_000_000)
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Ten bundles, one filesystem each; some metrics unknown (NULL).
_ROWS = [
    {
        "bundle_id": f"{i:032x}",
        "hostname": f"web-{i % 3}",
        "case_id": "SR-1" if i % 2 else None,
        "agent_id": f"ag_{i}",
        "created_at": _NOW_US - i * _DAY_US,
        "cpu_percent": float(i * 10),
        "memory_percent": None if i == 4 else float(50 + i * 5),
        "swap_percent": 0.0,
        "load1": i / 2,
        "load5": None,
        "load15": None,
        "tcp_retrans_pct": 0.5 * i,
        "clock_ntp_offset_ms": float(i * 40 - 200),
        "clock_collector_offset_ms": None,
    }
    for i in range(10)
]
_FS = [
    {"bundle_id": f"{i:032x}", "created_at": _NOW_US - i * _DAY_US, "mountpoint": "/var" if i % 2 else "/",
     "fstype": "ext4", "use_pct": float(i * 9),
     "fragmented_files_pct": float(i * 7), "fragmented_bytes_pct": None if i == 3 else float(i * 8),
     "fragments_p95": 1.0}
    for i in range(10)
]


@pytest.fixture
def metrics_store(store: Store) -> Iterator[Store]:
    with store.engine.begin() as conn:
        conn.execute(insert(bundle_metrics), _ROWS)
        conn.execute(insert(fs_metrics), _FS)
    yield store


def _run(store: Store, query: str) -> list[str]:
    return [r["bundle_id"] for r in store.run_metric_query(compile_query(query, now=NOW, limit=1000).statement)]


_COLUMN = {
    "cpu.percent": "cpu_percent",
    "memory.percent": "memory_percent",
    "load.1": "load1",
    "net.retrans_pct": "tcp_retrans_pct",
    "clock.offset_ms": "clock_ntp_offset_ms",
    "fs.use_pct": "use_pct",
    "fs.fragmented_bytes_pct": "fragmented_bytes_pct",
}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "=": operator.eq, "!=": operator.ne
}


@_SETTINGS
@given(
    field=st.sampled_from(sorted(_COLUMN)),
    op=st.sampled_from(sorted(_OPS)),
    value=st.integers(-300, 120),
    field2=st.sampled_from(sorted(_COLUMN)),
    op2=st.sampled_from(sorted(_OPS)),
    value2=st.integers(-300, 120),
    joiner=st.sampled_from(["and", "or", "AND"]),
    days=st.integers(0, 12),
)
def test_results_match_a_python_oracle(
    metrics_store: Store, field: str, op: str, value: int, field2: str, op2: str, value2: int, joiner: str, days: int
) -> None:
    query = f"{field} {op} {value} {joiner} not ({field2} {op2} {value2}) since {days}d"

    def holds(row: dict[str, object], name: str, o: str, v: int) -> bool | None:
        x = row[_COLUMN[name]]
        return None if x is None else _OPS[o](float(x), float(v))  # type: ignore[arg-type]

    expected = []
    for b, fs in zip(_ROWS, _FS, strict=True):
        row = {**b, **fs}
        a, c = holds(row, field, op, value), holds(row, field2, op2, value2)
        nc = None if c is None else not c
        # SQL's three-valued logic: NULL comparisons are unknown, and only TRUE selects.
        ok = (a is True and nc is True) if joiner.lower() == "and" else (a is True or nc is True)
        if ok and int(b["created_at"]) >= _NOW_US - days * _DAY_US:  # type: ignore[call-overload]
            expected.append(b["bundle_id"])
    assert sorted(_run(metrics_store, query)) == sorted(expected)


def test_fields_without_fs_give_one_row_per_bundle(metrics_store: Store) -> None:
    assert _run(metrics_store, "memory.percent > 90") == [f"{i:032x}" for i in (9,)]
    assert _run(metrics_store, "host = 'web-1' and cpu.percent >= 40") == [f"{i:032x}" for i in (4, 7)]
    assert _run(metrics_store, "clock.abs_offset_ms < 50") == [f"{i:032x}" for i in (4, 5, 6)]
    assert _run(metrics_store, "fs.mount = '/var' and fs.fragmented_bytes_pct > 30") == [
        f"{i:032x}" for i in (5, 7, 9)
    ]
    assert _run(metrics_store, "since 2026-12-05") == [f"{i:032x}" for i in (0, 1, 2)]
    assert _run(metrics_store, "until 2026-12-05T00:00Z since 2026-12-03") == [f"{i:032x}" for i in (3, 4)]


@pytest.mark.parametrize(
    ("query", "position", "words"),
    [
        ("memory.percnt > 90", 1, "unknown field 'memory.percnt'"),
        ("memory.percent > 90 and", 24, "expected a field name but found the end"),
        ("memory.percent 90", 16, "expected a comparison"),
        ("memory.percent > 'high'", 18, "compares with a number"),
        ("host > 'web'", 6, "only = and != apply"),
        ("host = web", 8, "compares with quoted text"),
        ("(cpu.percent > 1", 17, "expected ')'"),
        ("cpu.percent > 1 since yesterday", 23, "expected a duration"),
        ("cpu.percent > 1; drop table bundles", 16, "unexpected character ';'"),
        ("cpu.percent > 1 cpu.percent > 2", 17, "expected 'and', 'or', 'since', 'until' or the end"),
        ("cpu.percent > 1e999", 15, "not a finite number"),
        ("since 2026-13-40", 7, "is not a date"),
        ("bundles.facts_pb != 'x'", 1, "unknown field"),
        ("x" * (MAX_QUERY + 1), MAX_QUERY + 1, "at most"),
        ("not " * 40 + "cpu.percent > 1", 129, "nested more than"),
    ],
)
def test_errors_say_what_and_where(query: str, position: int, words: str) -> None:
    with pytest.raises(QueryError) as err:
        compile_query(query, now=NOW)
    assert err.value.position == position, str(err.value)
    assert f"position {position}" in str(err.value) and words in str(err.value)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80))
def test_any_text_compiles_or_fails_with_a_position(query: str) -> None:
    try:
        compile_query(query, now=NOW)
    except QueryError as exc:
        assert 1 <= exc.position <= len(query) + 1
        assert str(exc).startswith(f"query error at position {exc.position}: ")


_SQL_BITS = st.sampled_from(
    ["'", '"', ";", "--", "/*", "*/", " OR 1=1", "DROP TABLE bundles", "%", "_", "\\", ")", "(", "UNION SELECT"]
)


@_SETTINGS
@given(payload=st.lists(st.one_of(_SQL_BITS, st.text(alphabet="abcXYZ019 ", max_size=5)), min_size=1, max_size=8))
def test_values_are_bound_never_inlined(metrics_store: Store, payload: list[str]) -> None:
    value = "".join(payload).replace("'", "").replace("\n", "")
    if not value:
        return
    compiled = compile_query(f"host = '{value}' or fs.mount != '{value}'", now=NOW)
    neutral = compile_query("host = 'x' or fs.mount != 'x'", now=NOW)
    sql = compiled.statement.compile(metrics_store.engine)
    # The SQL text is the same whatever the value; the value travels only as a parameter.
    assert str(sql) == str(neutral.statement.compile(metrics_store.engine))
    assert list(sql.params.values()).count(value) == 2
    rows = metrics_store.run_metric_query(compiled.statement)
    assert {r["bundle_id"] for r in rows} == {r["bundle_id"] for r in _ROWS}  # every mount differs from it
    assert {"bundles", "bundle_metrics"} <= set(inspect(metrics_store.engine).get_table_names())


@_SETTINGS
@given(name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.;'\" ()=", min_size=1, max_size=30))
def test_only_whitelisted_names_reach_sql(name: str) -> None:
    try:
        compiled = compile_query(f"{name} > 1", now=NOW)
    except QueryError:
        return
    assert all(f in FIELDS for f in compiled.fields)


def test_every_field_compiles_and_runs(metrics_store: Store, tmp_path: Path) -> None:
    for name, field in FIELDS.items():
        query = f"{name} >= 0" if field.numeric else f"{name} != 'zzz'"
        assert isinstance(_run(metrics_store, query), list), name
