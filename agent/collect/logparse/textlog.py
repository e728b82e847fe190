"""Timestamps and severities of plain-text log lines (/var/log and friends).

Recognised at the start of a line, after an optional RFC 5424 ``<PRI>1 `` header:

* RFC 5424 / ISO 8601: ``2026-11-23T10:00:01.123456+01:00`` (``Z``, ``+hhmm`` too);
  without an offset the time is local (dpkg: ``2026-11-23 10:00:01``, dnf).
* RFC 3164 (BSD syslog, yum): ``Nov 23 10:00:01`` — no year and local time. The year
  is the one that puts the line at most two days after ``year_hint`` (the file's
  mtime: a log is not written in the future), so December lines read in January land
  in the right year.

Severity is structured only when a ``<PRI>`` is present (``PRI & 7``); otherwise it is
*guessed* from keywords in the message (emerg/panic, crit/fatal, error/failed,
warning) and is None when no keyword matches — a guess never invents "info".
"""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["guess_severity", "parse_text_line", "pri_severity"]

_SEV_BY_NUMBER = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_PRI = re.compile(r"<(\d{1,3})>(?:1 )?")
_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
    r"\s?(Z|[+-]\d\d:?\d\d)?(?=[\s\]]|$)"
)
_BSD = re.compile(r"([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d\d):(\d\d):(\d\d)(?=\s|$)")
_MONTHS = {
    m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)
}
_KEYWORDS = (
    ("emerg", re.compile(r"\b(?:emerg|emergency|panic)\b", re.IGNORECASE)),
    ("crit", re.compile(r"\b(?:crit|critical|fatal)\b", re.IGNORECASE)),
    ("err", re.compile(r"\b(?:err|error|errors|failed|failure)\b", re.IGNORECASE)),
    ("warning", re.compile(r"\b(?:warn|warning|warnings)\b", re.IGNORECASE)),
)


def pri_severity(pri: int) -> str | None:
    """Syslog PRIORITY/PRI number (0-7, or facility*8+severity) to a severity name."""
    return _SEV_BY_NUMBER[pri & 7] if 0 <= pri <= 191 else None


def guess_severity(msg: str) -> str | None:
    for sev, pattern in _KEYWORDS:
        if pattern.search(msg):
            return sev
    return None


def _tz(text: str | None) -> dt.tzinfo | None:
    if text is None:
        return None
    if text == "Z":
        return dt.UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + int(digits[2:])
    if minutes > 24 * 60:
        raise ValueError("offset out of range")
    return dt.timezone(sign * dt.timedelta(minutes=minutes))


def _local(naive: dt.datetime) -> dt.datetime:
    return naive.astimezone()  # a naive datetime is taken as local time


def parse_text_line(line: str, *, year_hint: dt.datetime) -> tuple[dt.datetime | None, str | None, str]:
    """``(ts, structured severity, message)``; ts is aware, None when none was found."""
    sev: str | None = None
    rest = line
    m = _PRI.match(rest)
    if m:
        sev = pri_severity(int(m.group(1)))
        rest = rest[m.end() :]
    try:
        iso = _ISO.match(rest)
        if iso:
            y, mo, d, h, mi, s, frac, tz = iso.groups()
            micro = int((frac or "0")[:6].ljust(6, "0"))
            naive = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro)
            zone = _tz(tz)
            ts = naive.replace(tzinfo=zone) if zone is not None else _local(naive)
            return ts.astimezone(dt.UTC), sev, rest[iso.end() :].lstrip()
        bsd = _BSD.match(rest)
        if bsd and bsd.group(1) in _MONTHS:
            return _bsd_time(bsd, year_hint), sev, rest[bsd.end() :].lstrip()
    except (ValueError, OverflowError):
        pass  # digits that only look like a date: the line keeps no timestamp
    return None, sev, rest


def _bsd_time(m: re.Match[str], year_hint: dt.datetime) -> dt.datetime:
    month, day = _MONTHS[m.group(1)], int(m.group(2))
    h, mi, s = int(m.group(3)), int(m.group(4)), int(m.group(5))
    limit = year_hint + dt.timedelta(days=2)
    for year in range(year_hint.year + 1, year_hint.year - 5, -1):
        try:
            ts = _local(dt.datetime(year, month, day, h, mi, s))
        except ValueError:  # Feb 29 in a non-leap year
            continue
        if ts <= limit:
            return ts.astimezone(dt.UTC)
    raise ValueError("no plausible year")
