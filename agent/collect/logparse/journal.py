"""systemd journal entries (``journalctl -o json``) and kernel ring buffer records.

Journal JSON quirks handled here (journalctl(1), "json" output mode): ``MESSAGE`` is a
string; an array of byte values when it holds unprintable or non-UTF-8 bytes; null when
it is over 4096 bytes and journalctl ran without ``--all`` (the logs collector passes
``--all``, so a long message arrives whole and ``LogRecord`` cuts it to 16 KiB; null
still comes from older callers and recorded output); and an array of those values when
the entry repeats the field. ``PRIORITY`` is a string "0".."7"; ``__REALTIME_TIMESTAMP``
is microseconds since the epoch as a string. Anything else malformed makes the line a
record with no timestamp, never an error. ``JOURNAL_FIELDS`` are the fields read (for
``--output-fields``).

Kernel records from ``/dev/kmsg`` are ``prio,seq,usec_since_boot,flags[,...];text``
followed by `` KEY=value`` continuation lines; ``dmesg`` lines are ``[secs.usecs] text``.
Both count from boot, so the boot time (wall clock) turns them into UTC timestamps.
"""

from __future__ import annotations

import datetime as dt
import json
import re

from agent.collect.logparse.record import LogRecord
from agent.collect.logparse.textlog import pri_severity

__all__ = ["JOURNAL_FIELDS", "dmesg_record", "journal_record", "kmsg_record"]

_EXTRA_FIELDS = (
    ("_SYSTEMD_UNIT", "unit"),
    ("SYSLOG_IDENTIFIER", "ident"),
    ("_PID", "pid"),
    ("_TRANSPORT", "transport"),
)
JOURNAL_FIELDS: tuple[str, ...] = ("MESSAGE", "PRIORITY", *(key for key, _name in _EXTRA_FIELDS))
_OMITTED = "[message omitted by journalctl: field too large]"
_DMESG = re.compile(r"(?:<(\d{1,3})>)?\[\s*(\d+)\.(\d{1,6})\]\s?(.*)", re.DOTALL)


def _message(value: object, *, nested: bool = False) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return bytes(v for v in value if 0 <= v < 256).decode("utf-8", "replace")
        if nested:
            return ""
        # A repeated field: one value per occurrence (each a string, bytes or null).
        return "\n".join(_message(v, nested=True) for v in value)
    if value is None:
        return _OMITTED
    return str(value)


def _int(value: object) -> int | None:
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def journal_record(line: bytes | str) -> LogRecord | None:
    """One ``journalctl -o json`` line as a record; None for a line that is not an object."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    ts: dt.datetime | None = None
    usec = _int(obj.get("__REALTIME_TIMESTAMP"))
    if usec is not None:
        try:
            ts = dt.datetime.fromtimestamp(usec / 1_000_000, dt.UTC)
        except (ValueError, OverflowError, OSError):
            ts = None
    prio = _int(obj.get("PRIORITY"))
    sev = pri_severity(prio) if prio is not None and 0 <= prio <= 7 else None
    extra: dict[str, str | int] = {}
    for key, name in _EXTRA_FIELDS:
        value = obj.get(key)
        if isinstance(value, str):
            number = _int(value) if name == "pid" else None
            extra[name] = number if number is not None else value
    return LogRecord(ts=ts, sev=sev, msg=_message(obj.get("MESSAGE")), extra=extra)


def kmsg_record(raw: bytes, boot: dt.datetime) -> LogRecord | None:
    """One ``/dev/kmsg`` read (one record) as a log record, None when malformed."""
    text = raw.decode("utf-8", "replace")
    head, sep, body = text.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    if len(fields) < 3:
        return None
    prio, seq, usec = _int(fields[0]), _int(fields[1]), _int(fields[2])
    if prio is None or usec is None:
        return None
    lines = body.rstrip("\n").split("\n")
    # Continuation lines (" SUBSYSTEM=pci") are device metadata, not message text.
    msg = lines[0]
    extra: dict[str, str | int] = {}
    for cont in lines[1:]:
        key, eq, value = cont.strip().partition("=")
        if eq and key:
            extra[key.lower()[:32]] = value[:256]
    try:
        ts = boot + dt.timedelta(microseconds=usec)
    except OverflowError:
        ts = None
    if seq is not None:
        extra["seq"] = seq
    return LogRecord(ts=ts, sev=pri_severity(prio & 7), msg=_unescape(msg), extra=extra)


def _unescape(msg: str) -> str:
    # The kernel escapes non-printable bytes as \xNN in /dev/kmsg.
    if "\\x" not in msg:
        return msg
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), msg)


def dmesg_record(line: str, boot: dt.datetime) -> LogRecord | None:
    """A ``dmesg -r`` line ``<6>[  12.345678] text`` (the ``<prio>`` is optional)."""
    m = _DMESG.match(line)
    if not m:
        return None if not line.strip() else LogRecord(ts=None, sev=None, msg=line)
    prio = m.group(1)
    sev = pri_severity(int(prio)) if prio is not None else None
    usec = int(m.group(2)) * 1_000_000 + int(m.group(3).ljust(6, "0"))
    try:
        ts: dt.datetime | None = boot + dt.timedelta(microseconds=usec)
    except OverflowError:
        ts = None
    return LogRecord(ts=ts, sev=sev, msg=m.group(4))
