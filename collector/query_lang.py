"""The metric filter language: a small query over the stored metrics, compiled to SQL.

Grammar (keywords in any case)::

    query      := [expr] { "since" when | "until" when }
    expr       := and_expr { "or" and_expr }
    and_expr   := unary { "and" unary }
    unary      := "not" unary | "(" expr ")" | field op value
    op         := ">" | ">=" | "<" | "<=" | "=" | "!="
    value      := number | 'text' | "text"   (no escapes: quote with the other quote)
    when       := 7d | 12h | 30m | 2w  (ago)  |  2026-12-01 | 2026-12-01T08:00Z

Example: ``fs.fragmented_bytes_pct > 30 and memory.percent > 90 since 7d``.

Why it is safe: a field name is looked up in ``FIELDS``, a fixed whitelist of column
expressions, and every value becomes a bound parameter; nothing from the query text is
ever placed in SQL text. Errors are ``QueryError`` (INVALID_ARGUMENT) naming the
1-based character position. A query naming an ``fs.*`` field returns one row per
(bundle, filesystem); otherwise one row per bundle. Newest bundles first.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, literal, not_, or_, select

from collector.storage.errors import InvalidArgument
from collector.storage.findings import bundle_metrics, fs_metrics
from collector.storage.schema import to_micros

__all__ = ["FIELDS", "MAX_QUERY", "CompiledQuery", "ParsedQuery", "QueryError", "compile_query", "parse_query"]

MAX_QUERY = 2000
_MAX_DEPTH = 32

_m, _f = bundle_metrics.c, fs_metrics.c


@dataclass(frozen=True)
class Field:
    column: Callable[[], ColumnElement[Any]]
    numeric: bool
    fs: bool
    help: str


FIELDS: dict[str, Field] = {
    "cpu.percent": Field(lambda: _m.cpu_percent, True, False, "CPU busy %, whole host"),
    "memory.percent": Field(lambda: _m.memory_percent, True, False, "memory in use %"),
    "swap.percent": Field(lambda: _m.swap_percent, True, False, "swap in use %"),
    "load.1": Field(lambda: _m.load1, True, False, "load average, 1 minute"),
    "load.5": Field(lambda: _m.load5, True, False, "load average, 5 minutes"),
    "load.15": Field(lambda: _m.load15, True, False, "load average, 15 minutes"),
    "net.retrans_pct": Field(lambda: _m.tcp_retrans_pct, True, False, "TCP segments retransmitted %"),
    "clock.offset_ms": Field(lambda: _m.clock_ntp_offset_ms, True, False, "offset from NTP (signed)"),
    "clock.abs_offset_ms": Field(lambda: func.abs(_m.clock_ntp_offset_ms), True, False, "|offset from NTP|"),
    "clock.collector_offset_ms": Field(
        lambda: _m.clock_collector_offset_ms, True, False, "collector clock minus the host's"
    ),
    "fs.use_pct": Field(lambda: _f.use_pct, True, True, "filesystem space used %"),
    "fs.fragmented_files_pct": Field(lambda: _f.fragmented_files_pct, True, True, "sampled files fragmented %"),
    "fs.fragmented_bytes_pct": Field(lambda: _f.fragmented_bytes_pct, True, True, "bytes in fragmented files %"),
    "fs.fragments_p95": Field(lambda: _f.fragments_p95, True, True, "fragments of the 95th percentile file"),
    "fs.mount": Field(lambda: _f.mountpoint, False, True, "mount point (text)"),
    "fs.type": Field(lambda: _f.fstype, False, True, "filesystem type (text)"),
    "host": Field(lambda: _m.hostname, False, False, "host name (text)"),
    "case": Field(lambda: _m.case_id, False, False, "case id (text)"),
    "agent": Field(lambda: _m.agent_id, False, False, "agent id (text)"),
}

_KEYWORDS = frozenset({"and", "or", "not", "since", "until"})
_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      |(?P<when>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2})?Z?)?(?![\w.]))
      |(?P<dur>\d+[smhdw](?![\w.]))
      |(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
      |(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
      |(?P<str>'[^'\n]{0,500}'|"[^"\n]{0,500}")
      |(?P<op>>=|<=|!=|==|>|<|=)
      |(?P<paren>[()])""",
    re.VERBOSE,
)
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class QueryError(InvalidArgument):
    """A query that does not parse or names an unknown field; says where (1-based)."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"query error at position {position}: {message}")
        self.position = position


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int  # 1-based


def _tokens(query: str) -> list[_Tok]:
    if len(query) > MAX_QUERY:
        raise QueryError(f"query is {len(query)} characters long; at most {MAX_QUERY} are allowed", MAX_QUERY + 1)
    out: list[_Tok] = []
    i = 0
    while i < len(query):
        m = _TOKEN.match(query, i)
        if m is None:
            raise QueryError(f"unexpected character {query[i]!r}", i + 1)
        kind = m.lastgroup or ""
        if kind != "ws":
            text = m.group()
            if kind == "name" and text.lower() in _KEYWORDS:
                kind, text = "kw", text.lower()
            out.append(_Tok(kind, text, i + 1))
        i = m.end()
    out.append(_Tok("end", "", len(query) + 1))
    return out


@dataclass(frozen=True)
class CompiledQuery:
    statement: Select[Any]
    fields: tuple[str, ...]  # the fields the query names, in order of first use
    uses_fs: bool


class _Parser:
    def __init__(self, query: str, now: dt.datetime) -> None:
        self.toks = _tokens(query)
        self.i = 0
        self.now = now
        self.fields: list[str] = []
        self.depth = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expr(self) -> ColumnElement[bool]:
        parts = [self.and_expr()]
        while self.peek().kind == "kw" and self.peek().text == "or":
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else or_(*parts)

    def and_expr(self) -> ColumnElement[bool]:
        parts = [self.unary()]
        while self.peek().kind == "kw" and self.peek().text == "and":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else and_(*parts)

    def unary(self) -> ColumnElement[bool]:
        tok = self.peek()
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise QueryError(f"nested more than {_MAX_DEPTH} deep", tok.pos)
        try:
            if tok.kind == "kw" and tok.text == "not":
                self.take()
                return not_(self.unary())
            if tok.kind == "paren" and tok.text == "(":
                self.take()
                inner = self.expr()
                close = self.take()
                if close.text != ")":
                    raise QueryError(f"expected ')' but found {_describe(close)}", close.pos)
                return inner
            return self.comparison()
        finally:
            self.depth -= 1

    def comparison(self) -> ColumnElement[bool]:
        name = self.take()
        if name.kind != "name":
            raise QueryError(f"expected a field name but found {_describe(name)}", name.pos)
        field = FIELDS.get(name.text.lower())
        if field is None:
            raise QueryError(f"unknown field {name.text[:60]!r}; known fields: {', '.join(FIELDS)}", name.pos)
        if name.text.lower() not in self.fields:
            self.fields.append(name.text.lower())
        op = self.take()
        if op.kind != "op":
            raise QueryError(
                f"expected a comparison (> >= < <= = !=) after {name.text} but found {_describe(op)}", op.pos
            )
        val = self.take()
        col = field.column()
        if field.numeric:
            if val.kind != "num":
                raise QueryError(f"{name.text} compares with a number, not {_describe(val)}", val.pos)
            number = float(val.text)
            if not math.isfinite(number):
                raise QueryError(f"{val.text[:40]} is not a finite number", val.pos)
            bound: Any = literal(number)
        else:
            if val.kind != "str":
                raise QueryError(f"{name.text} compares with quoted text, not {_describe(val)}", val.pos)
            if op.text not in ("=", "==", "!="):
                raise QueryError(f"{name.text} is text: only = and != apply", op.pos)
            bound = literal(val.text[1:-1])
        compared: ColumnElement[bool] = _COMPARE[op.text](col, bound)
        return compared

    def when(self) -> int:
        tok = self.take()
        if tok.kind == "dur":
            seconds = int(tok.text[:-1]) * _UNITS[tok.text[-1]]
            if seconds > 100 * 366 * 86400:
                raise QueryError(f"{tok.text} is more than a hundred years", tok.pos)
            return to_micros(self.now - dt.timedelta(seconds=seconds))
        if tok.kind == "when":
            try:
                text = tok.text.removesuffix("Z")
                when = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
            except ValueError:
                raise QueryError(f"{tok.text} is not a date", tok.pos) from None
            return to_micros(when)
        raise QueryError(f"expected a duration (7d, 12h) or a date (2026-12-01) but found {_describe(tok)}", tok.pos)


def _describe(tok: _Tok) -> str:
    return "the end of the query" if tok.kind == "end" else repr(tok.text[:40])


@dataclass(frozen=True)
class ParsedQuery:
    """A query parsed: its condition (or None), its time bounds and the fields it names."""

    condition: ColumnElement[bool] | None
    times: tuple[tuple[str, int], ...]  # ("since" | "until", microseconds)
    fields: tuple[str, ...]

    @property
    def uses_fs(self) -> bool:
        return any(FIELDS[f].fs for f in self.fields)

    @property
    def uses_bundle(self) -> bool:
        """Whether a condition names a bundle-wide field (host, memory, ...)."""
        return any(not FIELDS[f].fs for f in self.fields)


def parse_query(query: str, *, now: dt.datetime) -> ParsedQuery:
    """Parse ``query``: its condition over the metric tables, values bound, never inlined."""
    p = _Parser(query, now)
    cond: ColumnElement[bool] | None = None
    if p.peek().kind not in ("end",) and not (p.peek().kind == "kw" and p.peek().text in ("since", "until")):
        cond = p.expr()
    times: list[tuple[str, int]] = []
    while p.peek().kind == "kw" and p.peek().text in ("since", "until"):
        word = p.take().text
        times.append((word, p.when()))
    tail = p.peek()
    if tail.kind != "end":
        raise QueryError(f"expected 'and', 'or', 'since', 'until' or the end, but found {_describe(tail)}", tail.pos)
    return ParsedQuery(cond, tuple(times), tuple(p.fields))


def compile_query(query: str, *, now: dt.datetime, limit: int = 100) -> CompiledQuery:
    """Parse ``query`` into a SELECT over the stored metrics (values bound, never inlined).

    Which table the database walks, newest first, until the page is full: a query on
    filesystems alone walks ``fs_metrics``; one that also names a bundle-wide field
    walks ``bundle_metrics`` (one row per bundle, against one per filesystem there) and
    looks up a bundle's filesystems only for the bundles that can still match. Both
    tables carry the bundle's time, so the order and the rows are the same either way.
    """
    parsed = parse_query(query, now=now)
    by_fs = parsed.uses_fs and not parsed.uses_bundle
    walk = _f if by_fs else _m
    time_conds = [walk.created_at >= at if word == "since" else walk.created_at < at for word, at in parsed.times]
    cols: list[Any] = [_m.bundle_id, _m.hostname, _m.case_id, _m.agent_id, _m.created_at]
    source: Any = bundle_metrics
    order: list[Any] = [walk.created_at.desc(), walk.bundle_id]
    if parsed.uses_fs:
        cols.append(_f.mountpoint)
        source = bundle_metrics.join(fs_metrics, fs_metrics.c.bundle_id == bundle_metrics.c.bundle_id)
        if not by_fs:  # a bundle's filesystems in a stable order (on fs_metrics the walk keeps its index order)
            order.append(_f.id)
    cols.extend(FIELDS[f].column().label(f"v{i}") for i, f in enumerate(parsed.fields) if FIELDS[f].numeric)
    conds = [c for c in (parsed.condition, *time_conds) if c is not None]
    stmt = select(*cols).select_from(source).where(*conds).order_by(*order).limit(max(1, min(limit, 1000)))
    return CompiledQuery(stmt, parsed.fields, parsed.uses_fs)
