"""The log viewer's index and filter parsing: real records, real SQLite files."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.analysis import LogRecord
from collector.storage.errors import InvalidArgument
from collector.web.log_index import KEEP, LogIndex
from collector.web.logs import SEVERITY_LEVELS, parse_filter

RANKS = {s: i for i, s in enumerate(SEVERITY_LEVELS)}


def _records() -> list[LogRecord]:
    out = []
    for i in range(1000):
        src = ("kernel", "syslog", "journal")[i % 3]
        sev = ("err", "info", "warning", None)[i % 4]
        out.append(LogRecord(1_700_000_000.0 + i, src, sev, f"line {i} 100% done_{i % 7} Ünïcode", i + 1))
    return out


def test_index_pages_filters_and_is_owner_only(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    index = LogIndex(cache, "a" * 32)
    index.ensure(iter(_records()), RANKS)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(index.path.stat().st_mode) == 0o600
    assert not list(cache.glob("*.partial"))

    def page(**kw: object) -> list[tuple[int | None, float | None, str, str, str]]:
        args: dict[str, object] = {"source": "", "max_rank": None, "text": "", "since": None, "until": None,
                                   "offset": 0, "limit": 2000}
        args.update(kw)
        return index.page(**args)  # type: ignore[arg-type]

    assert [r[0] for r in page(limit=3, offset=10)] == [11, 12, 13]
    kernel_errors = page(source="kernel", max_rank=RANKS["err"])
    assert kernel_errors and all(r[2] == "kernel" and r[3] == "err" for r in kernel_errors)
    assert len(kernel_errors) == len([i for i in range(1000) if i % 3 == 0 and i % 4 == 0])
    # % and _ are literal characters of the text, not patterns; ASCII case does not matter.
    assert len(page(text="100% DONE_3")) == len([i for i in range(1000) if i % 7 == 3])
    assert page(text="0%_") == []
    timed = page(since=1_700_000_100.0, until=1_700_000_110.0)
    assert [r[0] for r in timed] == list(range(101, 111))


def test_a_failed_build_leaves_nothing_behind_and_old_indexes_go(tmp_path: Path) -> None:
    index = LogIndex(tmp_path, "b" * 32)
    with pytest.raises(OSError, match="blob unreadable"):
        index.ensure(_raising(), RANKS)
    assert not index.path.exists() and not list(tmp_path.iterdir())
    for i in range(KEEP + 2):
        LogIndex(tmp_path, f"{i:032x}").ensure(iter(_records()[:5]), RANKS)
    assert len(list(tmp_path.glob("*.sqlite"))) == KEEP


def _raising() -> Iterator[LogRecord]:
    yield LogRecord(None, "kernel", "err", "first", 1)
    raise OSError("blob unreadable")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=12), st.text(max_size=300), st.text(max_size=40),
       st.text(max_size=40))
def test_parse_filter_refuses_with_a_clear_error_or_accepts(
    source: str, severity: str, text: str, since: str, until: str
) -> None:
    try:
        flt = parse_filter(source, severity, text, since, until)
    except InvalidArgument as exc:
        assert any(name in str(exc) for name in ("source", "severity", "text", "since", "until"))
    else:
        assert flt.source == source and flt.text == text and len(text) <= 200
