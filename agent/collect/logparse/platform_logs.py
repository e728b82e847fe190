"""Windows Event Log (``wevtutil qe ... /f:RenderedXml``) and macOS unified log parsers.

wevtutil prints a sequence of ``<Event>`` elements with no root element; they are fed
to an incremental XML parser inside a synthetic root, so output is parsed as it
arrives and each event is dropped from the tree once read. Severity comes from the
numeric ``System/Level`` (1 critical, 2 error, 3 warning, 4 information, 5 verbose,
0 "log always"), never from ``RenderingInfo/Level``, which is localised ("Fehler",
"Avertissement"). The message is ``RenderingInfo/Message`` when rendered, else the
``EventData`` values joined. Event ids are counted as "<provider>/<id>" with the
"Microsoft-Windows-" prefix dropped ("ReFS/133").

``log show --style ndjson`` prints one JSON object per line; ``messageType`` is
Fault/Error/Default/Info/Debug. Python's expat is hardened against entity expansion
(billion laughs) since 3.7.1/expat 2.4, and this input comes from the local OS.
"""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from typing import Any

from agent.collect.logparse.record import LogRecord

__all__ = ["macos_record", "parse_wevtutil_xml", "windows_event_key"]

_WIN_LEVELS = {0: "info", 1: "crit", 2: "err", 3: "warning", 4: "info", 5: "debug"}
_MAC_LEVELS = {"fault": "crit", "error": "err", "default": "notice", "info": "info", "debug": "debug"}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    for c in elem:
        if _local(c.tag) == name:
            return c
    return None


def _text(elem: ET.Element | None) -> str:
    return (elem.text or "").strip() if elem is not None else ""


def windows_event_key(provider: str, event_id: int | str) -> str:
    short = provider.removeprefix("Microsoft-Windows-")
    return f"{short}/{event_id}"


def _event_record(event: ET.Element) -> LogRecord:
    system = _child(event, "System")
    provider = channel = ""
    event_id = level = record_id = None
    ts: dt.datetime | None = None
    if system is not None:
        prov = _child(system, "Provider")
        provider = prov.get("Name", "") if prov is not None else ""
        channel = _text(_child(system, "Channel"))
        eid = _text(_child(system, "EventID"))
        event_id = int(eid) if eid.isdigit() else None
        lvl = _text(_child(system, "Level"))
        level = int(lvl) if lvl.isdigit() else None
        rid = _text(_child(system, "EventRecordID"))
        record_id = int(rid) if rid.isdigit() else None
        created = _child(system, "TimeCreated")
        stamp = created.get("SystemTime", "") if created is not None else ""
        try:
            ts = dt.datetime.fromisoformat(stamp).astimezone(dt.UTC) if stamp else None
        except ValueError:
            ts = None
    message = ""
    rendering = _child(event, "RenderingInfo")
    if rendering is not None:
        message = _text(_child(rendering, "Message"))
    if not message:
        data = _child(event, "EventData")
        if data is None:
            data = _child(event, "UserData")
        if data is not None:
            parts = [
                f"{d.get('Name')}={_text(d)}" if d.get("Name") else _text(d)
                for d in data.iter()
                if d is not data and _text(d)
            ]
            message = "; ".join(parts)
    extra: dict[str, str | int] = {"provider": provider, "channel": channel}
    if event_id is not None:
        extra["event_id"] = event_id
        extra["key"] = windows_event_key(provider, event_id)
    if record_id is not None:
        extra["record"] = record_id
    sev = _WIN_LEVELS.get(level) if level is not None else None
    return LogRecord(ts=ts, sev=sev, msg=message, extra=extra)


def parse_wevtutil_xml(chunks: Iterable[bytes]) -> Iterator[LogRecord]:
    """Records from wevtutil XML output given in chunks, in the order printed.

    Raises ``ET.ParseError`` (a ``SyntaxError``) on malformed XML after yielding every
    event before the damage.
    """
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("end",))
    parser.feed(b"<Events>")
    depth_tag = "Event"
    for chunk in chunks:
        # wevtutil may emit an XML declaration per document; it cannot sit inside a root.
        parser.feed(chunk.replace(b'<?xml version="1.0" encoding="utf-8"?>', b""))
        yield from _drain(parser, depth_tag)
    parser.feed(b"</Events>")
    yield from _drain(parser, depth_tag)


def _drain(parser: ET.XMLPullParser[ET.Element], tag: str) -> Iterator[LogRecord]:
    events: Iterator[Any] = parser.read_events()
    for _event, elem in events:
        if isinstance(elem, ET.Element) and _local(elem.tag) == tag:
            yield _event_record(elem)
            elem.clear()


def macos_record(line: bytes | str) -> LogRecord | None:
    """One ``log show --style ndjson`` line; None for non-event lines (summaries, junk)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or "eventMessage" not in obj:
        return None
    ts: dt.datetime | None = None
    stamp = obj.get("timestamp")
    if isinstance(stamp, str):
        try:
            ts = dt.datetime.fromisoformat(stamp).astimezone(dt.UTC)
        except ValueError:
            ts = None
    kind = obj.get("messageType")
    sev = _MAC_LEVELS.get(kind.lower()) if isinstance(kind, str) else None
    extra: dict[str, str | int] = {}
    for key, name in (
        ("processImagePath", "process"),
        ("subsystem", "subsystem"),
        ("category", "category"),
        ("processID", "pid"),
    ):
        value = obj.get(key)
        if name == "pid":
            if isinstance(value, int) and not isinstance(value, bool):
                extra[name] = value
        elif isinstance(value, str) and value:
            extra[name] = value
    msg = obj.get("eventMessage")
    return LogRecord(ts=ts, sev=sev, msg=msg if isinstance(msg, str) else "", extra=extra)
