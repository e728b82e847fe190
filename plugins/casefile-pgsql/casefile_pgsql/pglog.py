"""PostgreSQL server logs: parse stderr-format lines, read the recent ones, count known errors.

The default Debian/RHEL ``log_line_prefix`` gives lines like::

    2026-11-23 10:00:00.123 UTC [1234] postgres@shop ERROR:  deadlock detected
    2026-11-23 10:00:00.123 UTC [1234] postgres@shop DETAIL:  Process 1234 waits for ...

``%m`` (with milliseconds) or ``%t``, then anything, then ``LEVEL:  message``. Lines
without that shape (a multi-line statement's continuation) belong to the entry before
them and inherit its time.

Files are read backwards in blocks (the agent's ``read_lines_backwards``, part of the
plugin API ``agent.collect``), so the last hours of a large log cost only their own bytes.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.collect import read_lines_backwards

# Pattern name -> what it matches in a line; levels match the LEVEL: field, the rest the text.
LEVEL_PATTERNS = ("FATAL", "PANIC", "ERROR")
TEXT_PATTERNS = (
    "could not",
    "deadlock detected",
    "checkpoints are occurring too frequently",
    "terminating connection due to",
)
PATTERNS = LEVEL_PATTERNS + TEXT_PATTERNS

_LINE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}:\d{2}:\d{2})(?P<frac>\.\d{1,6})?"
    r"(?: (?P<tz>[A-Za-z]{1,6}|[+-]\d{2}(?::?\d{2})?))?"
    r"(?P<rest>.*?)\b(?P<level>DEBUG[1-5]?|INFO|NOTICE|WARNING|ERROR|LOG|FATAL|PANIC|STATEMENT|DETAIL|HINT"
    r"|CONTEXT|QUERY|LOCATION):  ?(?P<msg>.*)$"
)
_PID = re.compile(r"\[(?P<pid>\d+)\]")
# PostgreSQL level -> the bundle's syslog-style severity.
SEVERITY = {
    "PANIC": "emerg",
    "FATAL": "crit",
    "ERROR": "err",
    "WARNING": "warning",
    "NOTICE": "notice",
    "LOG": "info",
    "INFO": "info",
}
_OLD_LINES_BEFORE_STOP = 50


@dataclass(frozen=True)
class PgLogLine:
    ts: dt.datetime | None  # aware UTC; None when the line carries no time
    level: str  # "ERROR", "LOG", ... or "" for continuation lines
    pid: int | None
    msg: str


def _tz(name: str | None, naive: dt.datetime) -> dt.datetime:
    if not name or name.upper() in ("UTC", "GMT", "Z"):
        return naive.replace(tzinfo=dt.UTC)
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})?", name)
    if m:
        offset = dt.timedelta(hours=int(m[2]), minutes=int(m[3] or 0))
        return naive.replace(tzinfo=dt.timezone(-offset if m[1] == "-" else offset))
    # An abbreviation (CET, EST): the server's log_timezone is almost always the host's.
    return dt.datetime.fromtimestamp(time.mktime(naive.timetuple()), dt.UTC).replace(microsecond=naive.microsecond)


def parse_pg_line(line: str) -> PgLogLine:
    """One log line; a line without the prefix is a continuation (level "")."""
    m = _LINE.match(line)
    if not m:
        return PgLogLine(None, "", None, line)
    try:
        naive = dt.datetime.fromisoformat(f"{m['date']}T{m['time']}{m['frac'] or ''}")
    except ValueError:
        return PgLogLine(None, "", None, line)
    pid = _PID.search(m["rest"])
    return PgLogLine(_tz(m["tz"], naive), m["level"], int(pid["pid"]) if pid else None, m["msg"])


def matches(entry: PgLogLine) -> list[str]:
    """The PATTERNS this line counts for."""
    hits = [p for p in LEVEL_PATTERNS if entry.level == p]
    hits += [p for p in TEXT_PATTERNS if p in entry.msg]
    return hits


def count_patterns(entries: list[PgLogLine]) -> Counter[str]:
    counts: Counter[str] = Counter({p: 0 for p in PATTERNS})
    for e in entries:
        counts.update(matches(e))
    return counts


def lines_backwards(fh: BinaryIO) -> Iterator[bytes]:
    """Lines of ``fh`` newest first (the file's size now is the end: appends are ignored)."""
    for _offset, line in read_lines_backwards(fh):
        if line:
            yield line.rstrip(b"\r")


def log_files(directory: Path, since: float) -> list[Path]:
    """Plain-text server logs touched since ``since`` (epoch), newest first."""
    found = []
    for p in directory.iterdir():
        name = p.name
        if not (name.endswith((".log", ".log.1")) or re.search(r"\.log\.\d+$", name)):
            continue
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_file() and st.st_mtime >= since:
            found.append((st.st_mtime, p))
    return [p for _, p in sorted(found, reverse=True)]


@dataclass
class Recent:
    entries: list[tuple[str, PgLogLine]]  # (file name, line) oldest first
    truncated: bool
    bytes_read: int
    files: list[str]


def read_recent(directory: Path, since: dt.datetime, max_bytes: int) -> Recent:
    """Lines from ``since`` on across the directory's logs, newest kept under ``max_bytes``."""
    newest_first: list[tuple[str, PgLogLine]] = []
    used = 0
    truncated = False
    files = log_files(directory, since.timestamp())
    for path in files:
        old_run = 0
        pending: list[PgLogLine] = []  # continuations waiting for their entry's time
        with open(path, "rb") as fh:
            for raw in lines_backwards(fh):
                if used + len(raw) + 1 > max_bytes:
                    truncated = True
                    break
                used += len(raw) + 1
                entry = parse_pg_line(raw.decode("utf-8", "replace"))
                if entry.ts is None:
                    pending.append(entry)
                    continue
                if entry.ts < since:
                    old_run += 1
                    pending.clear()
                    if old_run >= _OLD_LINES_BEFORE_STOP:
                        break
                    continue
                old_run = 0
                for cont in pending:
                    newest_first.append((path.name, PgLogLine(entry.ts, "", entry.pid, cont.msg)))
                pending.clear()
                newest_first.append((path.name, entry))
        if truncated:
            break
    newest_first.reverse()
    return Recent(newest_first, truncated, used, [p.name for p in files])
