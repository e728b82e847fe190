"""The log viewer's server side: one page of a stored bundle's log lines, filtered.

The first view of a bundle's logs verifies its blob (as every read of a blob is: the
blob store is trusted no more than the wire) and copies the lines into an indexed
SQLite file (``collector.web.log_index``); every page is then one query. Filters:
source (exact), severity (this level or worse), text (a substring of the message, any
case for ASCII letters) and a time range.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from agent.analysis import BundleView
from collector.storage.errors import InvalidArgument
from collector.storage.text import CONTROL_RE, clip
from collector.web.log_index import LogIndex

__all__ = ["PAGE_SIZE", "SEVERITY_LEVELS", "LogFilter", "LogPage", "parse_filter", "read_log_page"]

PAGE_SIZE = 200
MAX_PAGE = 10_000
SEVERITY_LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_RANK = {s: i for i, s in enumerate(SEVERITY_LEVELS)}



@dataclass(frozen=True)
class LogFilter:
    source: str = ""
    severity: str = ""  # this level or worse; "" = every line
    text: str = ""
    since: float | None = None
    until: float | None = None



@dataclass(frozen=True)
class LogLine:
    n: int | None
    at: str
    source: str
    severity: str
    message: str


@dataclass(frozen=True)
class LogPage:
    bundle_id: str
    page: int
    lines: tuple[LogLine, ...]
    more: bool
    has_logs: bool


def _time(field: str, value: str) -> float | None:
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{field} {clip(value, 40)!r} is not a time (YYYY-MM-DDTHH:MM, UTC)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def parse_filter(source: str, severity: str, text: str, since: str, until: str) -> LogFilter:
    """The filter from the form's fields, each checked (clear message naming the field)."""
    for name, value, limit in (("source", source, 200), ("text", text, 200)):
        if len(value) > limit:
            raise InvalidArgument(f"{name} is {len(value)} characters long; at most {limit} are allowed")
        if CONTROL_RE.search(value):
            raise InvalidArgument(f"{name} {clip(value, 40)!r} holds a control character")
    if severity and severity not in _RANK:
        raise InvalidArgument(f"severity {clip(severity, 20)!r} is not one of {', '.join(SEVERITY_LEVELS)}")
    return LogFilter(source, severity, text, _time("since", since), _time("until", until))


def _fmt(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def read_log_page(bundle_id: str, path: Path, cache_dir: Path, flt: LogFilter, page: int) -> LogPage:
    if page < 0 or page > MAX_PAGE:
        raise InvalidArgument(f"page {page} is not between 0 and {MAX_PAGE}")
    index = LogIndex(cache_dir, bundle_id)
    if not index.path.exists():
        index.ensure(BundleView.from_file(path).iter_logs(), _RANK)
    rows = index.page(
        source=flt.source, max_rank=_RANK[flt.severity] if flt.severity else None, text=flt.text,
        since=flt.since, until=flt.until, offset=page * PAGE_SIZE, limit=PAGE_SIZE + 1,
    )
    lines = tuple(LogLine(n, _fmt(ts), src, sev, msg) for n, ts, src, sev, msg in rows[:PAGE_SIZE])
    has_logs = bool(rows) or page > 0 or bool(index.page(
        source="", max_rank=None, text="", since=None, until=None, offset=0, limit=1))
    return LogPage(bundle_id, page, lines, len(rows) > PAGE_SIZE, has_logs)
