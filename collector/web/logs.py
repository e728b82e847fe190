"""The log viewer's server side: one page of a stored bundle's log lines, filtered.

The blob is verified once (as every read of a blob is: the blob store is trusted no
more than the wire) and the view kept in a small cache, since a bundle never changes;
each page is then one streaming pass over the log members that stops as soon as the
page is full, so the first pages of a 1,000,000-line bundle cost a fraction of a full
pass. Filters: source (exact), severity (this level or worse), text (a substring of the
message, any case) and a time range.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from agent.analysis import BundleView, LogRecord
from collector.storage.errors import InvalidArgument
from collector.storage.text import CONTROL_RE, clip

__all__ = ["PAGE_SIZE", "SEVERITY_LEVELS", "LogFilter", "LogPage", "parse_filter", "read_log_page"]

PAGE_SIZE = 200
MAX_PAGE = 10_000
SEVERITY_LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_RANK = {s: i for i, s in enumerate(SEVERITY_LEVELS)}
_VIEWS: OrderedDict[tuple[str, str], BundleView] = OrderedDict()
_VIEWS_LOCK = threading.Lock()
_VIEWS_MAX = 4


@dataclass(frozen=True)
class LogFilter:
    source: str = ""
    severity: str = ""  # this level or worse; "" = every line
    text: str = ""
    since: float | None = None
    until: float | None = None

    def matches(self, rec: LogRecord) -> bool:
        if self.source and rec.src != self.source:
            return False
        if self.severity and (rec.sev is None or _RANK.get(rec.sev, 99) > _RANK[self.severity]):
            return False
        if self.since is not None and (rec.ts is None or rec.ts < self.since):
            return False
        if self.until is not None and (rec.ts is None or rec.ts >= self.until):
            return False
        return not self.text or self.text.casefold() in rec.msg.casefold()


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


def _view(bundle_id: str, path: Path) -> BundleView:
    key = (bundle_id, str(path))
    with _VIEWS_LOCK:
        view = _VIEWS.get(key)
        if view is not None:
            _VIEWS.move_to_end(key)
            return view
    view = BundleView.from_file(path)
    with _VIEWS_LOCK:
        _VIEWS[key] = view
        while len(_VIEWS) > _VIEWS_MAX:
            _VIEWS.popitem(last=False)
    return view


def _fmt(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def read_log_page(bundle_id: str, path: Path, flt: LogFilter, page: int) -> LogPage:
    if page < 0 or page > MAX_PAGE:
        raise InvalidArgument(f"page {page} is not between 0 and {MAX_PAGE}")
    view = _view(bundle_id, path)
    skip = page * PAGE_SIZE
    lines: list[LogLine] = []
    more = False
    for rec in view.iter_logs():
        if not flt.matches(rec):
            continue
        if skip:
            skip -= 1
            continue
        if len(lines) == PAGE_SIZE:
            more = True
            break
        lines.append(LogLine(rec.n, _fmt(rec.ts), rec.src, rec.sev or "", rec.msg))
    return LogPage(bundle_id, page, tuple(lines), more, view.has_logs)
