"""Where the logs collector reads from, one function per kind of source.

Each function takes the source's ``NewestFirstSink`` and a ``Window`` and feeds
records newest first; it returns the origin (command or path) for ``LogSource.origin``
and raises ``SourceUnavailable`` with a reason when the source does not exist here.
"""

from __future__ import annotations

import datetime as dt
import errno
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.collect.command import CommandNotFound, run_command, stream_lines
from agent.collect.logparse import (
    JOURNAL_FIELDS,
    LogRecord,
    NewestFirstSink,
    TailSpool,
    dmesg_record,
    journal_record,
    kmsg_record,
    macos_record,
    parse_wevtutil_xml,
    read_text_log,
)
from agent.errors import CollectionError

__all__ = [
    "KMSG",
    "LINUX_TEXT_LOGS",
    "WINDOWS_CHANNELS",
    "PartialSource",
    "SourceUnavailable",
    "Window",
    "journal_argv",
    "journal_source",
    "kernel_source",
    "macos_source",
    "text_source",
    "windows_source",
]

# name -> candidate paths (the first that exists is read).
LINUX_TEXT_LOGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("syslog", ("/var/log/syslog",)),
    ("messages", ("/var/log/messages",)),
    ("auth", ("/var/log/auth.log", "/var/log/secure")),
    ("kern", ("/var/log/kern.log",)),
    ("dpkg", ("/var/log/dpkg.log",)),
    ("yum", ("/var/log/yum.log",)),
    ("dnf", ("/var/log/dnf.log",)),
)
WINDOWS_CHANNELS: tuple[tuple[str, str], ...] = (
    ("windows-system", "System"),
    ("windows-application", "Application"),
    ("windows-refs", "Microsoft-Windows-ReFS/Operational"),
)
KMSG = Path("/dev/kmsg")
# A stream read past the cap only to count dropped lines never reads more than this.
_STREAM_MAX = 1 << 30
_WEVT_MAX_EVENTS = 50_000


class SourceUnavailable(CollectionError):
    """This source does not exist or cannot be read here; the message is the reason."""


@dataclass(frozen=True)
class Window:
    since: dt.datetime
    deadline: float  # time.monotonic(): stop reading, keep what was read
    temp_dir: Path
    priority: str = ""  # journalctl --priority value, "" for all

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def _booted_with_systemd() -> bool:
    return os.path.isdir("/run/systemd/system")  # what sd_booted(3) checks


def journal_argv(window: Window, *, kernel: bool = False, only_fields: bool = True) -> list[str]:
    """The journalctl command line for a window.

    ``--all``: without it every field over 4096 bytes arrives as null, and a message
    is only cut later, at 16 KiB. Only together with ``--output-fields`` (systemd 236+),
    which keeps a binary field that ``--all`` would print whole (a core dump stored in
    the journal) out of the line, which is read into memory in one piece. An older
    journalctl gets neither: long messages arrive as null, which the parser handles.
    """
    argv = ["journalctl", "-o", "json", "-r", "-q", "--no-pager"]
    if only_fields:
        argv += ["--all", "--output-fields=" + ",".join(JOURNAL_FIELDS)]
    argv += ["--since", f"@{int(window.since.timestamp())}"]
    if kernel:
        argv.append("-k")
    if window.priority:
        argv += ["--priority", window.priority]
    return argv


class _NoOutputFields(Exception):
    """journalctl older than systemd 236 refused ``--output-fields`` before printing anything."""


def journal_source(sink: NewestFirstSink, window: Window, *, kernel: bool = False) -> str:
    """``journalctl -o json -r`` streamed: newest first, so the cap just stops reading."""
    try:
        return _read_journal(sink, window, journal_argv(window, kernel=kernel))
    except _NoOutputFields:
        return _read_journal(sink, window, journal_argv(window, kernel=kernel, only_fields=False))


def _read_journal(sink: NewestFirstSink, window: Window, argv: list[str]) -> str:
    seen = 0
    with stream_lines(argv, timeout=window.remaining(), max_bytes=_STREAM_MAX) as stream:
        for line in stream:
            seen += 1
            if sink.full:
                sink.dropped()  # counting only: no JSON parse past the cap
                continue
            record = journal_record(line)
            if record is not None:
                sink.add(record)
    result = stream.result
    assert result is not None
    origin = " ".join(argv)
    if result.timed_out:
        sink.dropped(0)
        raise PartialSource(origin, "stopped at the time budget; older entries not read")
    if seen == 0:
        if result.returncode not in (0, None):
            if b"output-fields" in result.stderr and any(a.startswith("--output-fields=") for a in argv):
                raise _NoOutputFields
            raise SourceUnavailable(result.describe_failure())
        if not _booted_with_systemd():
            raise SourceUnavailable("unsupported: no systemd journal here (not booted with systemd)")
    return origin


class PartialSource(Exception):
    """The source delivered records but stopped early; origin and reason for the facts."""

    def __init__(self, origin: str, reason: str) -> None:
        super().__init__(reason)
        self.origin = origin
        self.reason = reason


def kernel_source(
    sink: NewestFirstSink,
    window: Window,
    *,
    systemd: bool | None = None,
    kmsg: Path = KMSG,
) -> str:
    """``journalctl -k`` where the journal runs, else ``/dev/kmsg``, else ``dmesg -r``.

    ``systemd`` (default: whether the machine booted with it) and ``kmsg`` choose the
    path explicitly, for the machines where the default one is not what is to be read.
    """
    booted = _booted_with_systemd() if systemd is None else systemd
    if booted:
        try:
            return journal_source(sink, window, kernel=True)
        except (SourceUnavailable, CommandNotFound):
            pass
    boot = dt.datetime.fromtimestamp(psutil.boot_time(), dt.UTC)
    try:
        records = _read_kmsg(boot, kmsg)
        origin = str(kmsg)
    except OSError:
        result = run_command(["dmesg", "-r"], timeout=window.remaining(), max_bytes=64 << 20)
        if not result.ok:
            raise SourceUnavailable(f"{kmsg} unreadable and {result.describe_failure()}") from None
        records = [r for r in (dmesg_record(x, boot) for x in result.text().splitlines()) if r]
        origin = "dmesg -r"
    # The ring buffer is small (log_buf_len), so holding it in memory is bounded.
    for record in reversed(records):
        if record.ts is not None and record.ts < window.since:
            break
        if sink.full:
            sink.dropped()
        else:
            sink.add(record)
    return origin


def _read_kmsg(boot: dt.datetime, path: Path) -> list[LogRecord]:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    records: list[LogRecord] = []
    try:
        while True:
            try:
                raw = os.read(fd, 16384)  # one record per read
            except BlockingIOError:
                break  # nothing more: the end of the buffer
            except BrokenPipeError:
                continue  # records overwritten while reading; the next read resumes
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    continue  # a record larger than our buffer
                raise
            if not raw:
                break
            record = kmsg_record(raw, boot)
            if record is not None:
                records.append(record)
    finally:
        os.close(fd)
    return records


def text_source(sink: NewestFirstSink, window: Window, path: Path) -> str:
    if not path.exists():
        raise SourceUnavailable(f"{path} does not exist")
    outcome = read_text_log(path, sink, since=window.since, deadline=window.deadline, temp_dir=window.temp_dir)
    origin = ", ".join(outcome.files) or str(path)
    if not outcome.files and outcome.errors:
        raise SourceUnavailable("; ".join(outcome.errors))
    if outcome.timed_out:
        sink.dropped(0)
        raise PartialSource(origin, "stopped at the time budget; older lines not read")
    if outcome.errors:
        raise PartialSource(origin, "; ".join(outcome.errors))
    return origin


def windows_source(sink: NewestFirstSink, window: Window, channel: str) -> str:
    """``wevtutil qe`` newest first (``/rd:true``) with a TimeCreated filter.

    RenderedXml rather than plain xml: only the rendered form carries message text.
    """
    since_ms = max(0, int((dt.datetime.now(dt.UTC) - window.since).total_seconds() * 1000))
    query = f"*[System[TimeCreated[timediff(@SystemTime) <= {since_ms}]]]"
    argv = ["wevtutil", "qe", channel, f"/q:{query}", "/f:RenderedXml", "/rd:true", f"/c:{_WEVT_MAX_EVENTS}"]
    result = run_command(argv, timeout=window.remaining(), max_bytes=max(sink.max_bytes * 4, 1 << 20))
    origin = " ".join(argv)
    if not result.stdout and not result.ok:
        raise SourceUnavailable(result.describe_failure())
    chunks = (result.stdout[i : i + 65536] for i in range(0, len(result.stdout), 65536))
    try:
        for record in parse_wevtutil_xml(chunks):
            key = record.extra.get("key")
            if isinstance(key, str):
                sink.event_id_counts[key] += 1
            if sink.full:
                sink.dropped()
            else:
                sink.add(record)
    except SyntaxError as exc:  # ET.ParseError; expected when max_bytes cut the output
        if not result.truncated:
            raise PartialSource(origin, f"unparsable wevtutil output: {exc}") from None
    if result.truncated or result.timed_out:
        sink.dropped(0)
        raise PartialSource(origin, "output cut at the byte cap or time budget; newest kept")
    return origin


def macos_source(sink: NewestFirstSink, window: Window) -> str:
    """``log show --style ndjson`` prints oldest first: keep its tail on disk, read back."""
    minutes = max(1, math.ceil((dt.datetime.now(dt.UTC) - window.since).total_seconds() / 60))
    argv = ["log", "show", "--style", "ndjson", "--last", f"{minutes}m"]
    spool = TailSpool(window.temp_dir, "macos", max(sink.max_bytes * 2, 1 << 20))
    try:
        with stream_lines(argv, timeout=window.remaining(), max_bytes=_STREAM_MAX) as stream:
            for line in stream:
                spool.write_line(line)
        result = stream.result
        assert result is not None
        if spool.dropped_lines:
            sink.dropped(spool.dropped_lines)
        for line in spool.newest_first():
            record = macos_record(line)
            if record is None:
                continue
            if sink.full:
                sink.dropped()
            else:
                sink.add(record)
    finally:
        spool.close()
    origin = " ".join(argv)
    if result.timed_out:
        raise PartialSource(origin, "stopped at the time budget before the newest entries")
    if sink.lines == 0 and result.returncode not in (0, None):
        raise SourceUnavailable(result.describe_failure())
    return origin
