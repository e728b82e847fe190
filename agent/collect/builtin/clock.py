"""Clock: is this machine's time synchronised, by what, and how far off it says it is.

Linux tries, in order: ``timedatectl show`` (NTPSynchronized — set by whichever daemon
disciplines the kernel clock), ``chronyc -c tracking`` (offset), ``ntpq -pn`` (the
selected peer's offset). When none answers (no systemd, no daemon's tool, a container),
the kernel itself is asked: ``adjtimex(2)`` in read-only mode, whose maximum error bound
is what timedatectl reports NTPSynchronized from (below the kernel's 16 s ceiling) and
says how far off the kernel thinks it may be. Windows parses ``w32tm /query /status``; macOS reads
``systemsetup -getusingnetworktime`` when allowed and otherwise states it does not know.
The offset to the *collector* is measured by the transport before collection when the
run will be uploaded, and handed in as option ``collector_offset_ms``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as dt
import os
import re

from agent.collect.command import CommandNotFound, run_command
from agent.collect.framework import CollectContext, Collector, current_platform
from agent.collect.options import FloatOption
from protos import facts_pb2

__all__ = [
    "ClockCollector",
    "kernel_clock",
    "parse_chrony_tracking",
    "parse_ntpq_peers",
    "parse_timedatectl_show",
    "parse_w32tm_status",
]

_MAX_OUT = 256 * 1024


def parse_timedatectl_show(text: str) -> dict[str, str]:
    """``Key=Value`` lines of ``timedatectl show``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            out[key.strip()] = value.strip()
    return out


def parse_chrony_tracking(text: str) -> tuple[bool, float, str]:
    """(synchronised, offset ms, reference) from ``chronyc -c tracking`` CSV.

    Fields: ref id, ref name, stratum, ref time, system time offset (s, positive = we
    are fast), last offset, rms offset, frequency, ..., leap status (last).
    """
    fields = text.strip().splitlines()[0].split(",") if text.strip() else []
    if len(fields) < 5:
        raise ValueError(f"unexpected chronyc tracking output: {text[:200]!r}")
    offset_ms = float(fields[4]) * 1000.0
    leap = fields[-1].strip().lower()
    synced = fields[0] not in ("00000000", "7F7F0101") and leap != "not synchronised"
    return synced, offset_ms, fields[1]


def parse_ntpq_peers(text: str) -> tuple[bool, float, str]:
    """(synchronised, offset ms, peer) from ``ntpq -pn``: the row marked ``*`` is selected."""
    for line in text.splitlines():
        if line.startswith("*"):
            cols = line[1:].split()
            if len(cols) >= 9:
                return True, float(cols[8]), cols[0]
    return False, 0.0, ""


# English, German, French, Spanish labels of the "Source:" line.
_W32_SOURCE = re.compile(r"^\s*(?:Source|Quelle|Fuente)\s*:\s*(.+)$", re.MULTILINE)


def parse_w32tm_status(text: str) -> tuple[bool, str, str]:
    """(synchronised, source, detail) from ``w32tm /query /status``.

    The labels are localised, so lines are matched by position-independent hints:
    "Source:" is the time source; "Local CMOS Clock" or "Free-running System Clock"
    as the source means not synchronised; "Leap Indicator: 3" means unsynchronised.
    """
    source = ""
    m = _W32_SOURCE.search(text)
    if m:
        source = m.group(1).strip()
    unsynced = (
        not source
        or "Local CMOS Clock" in source
        or "Free-running System Clock" in source
        or re.search(r"Leap Indicator:\s*3", text) is not None
    )
    detail = " ".join(line.strip() for line in text.splitlines() if line.strip())[:500]
    return (not unsynced), source, detail


COLLECTOR_OFFSET = FloatOption(
    "collector_offset_ms",
    0.0,
    "this clock's offset to the upload target's, measured before collecting (ms)",
    internal=True,
    minimum=-1e12,
    maximum=1e12,
)


class ClockCollector(Collector):
    name = "clock"
    description = "Time synchronisation state, source and reported offset"
    budget_s = 3.0
    facts_field = "clock"
    facts_type = facts_pb2.ClockFacts

    options = (COLLECTOR_OFFSET,)

    def collect(self, ctx: CollectContext) -> facts_pb2.ClockFacts:
        facts = facts_pb2.ClockFacts(timezone=_timezone())
        platform = current_platform()
        if platform == "linux":
            self._linux(ctx, facts)
        elif platform == "windows":
            self._windows(ctx, facts)
        elif platform == "darwin":
            self._macos(ctx, facts)
        else:
            facts.detail = f"unsupported: no clock sync query on {platform}"
        if COLLECTOR_OFFSET.name in ctx.options:
            facts.collector_offset_ms = ctx.get(COLLECTOR_OFFSET)
            facts.collector_offset_known = True
        return facts

    def _run(self, ctx: CollectContext, argv: list[str]) -> str | None:
        try:
            result = run_command(argv, timeout=max(0.1, ctx.remaining() / 3), max_bytes=_MAX_OUT)
        except CommandNotFound:
            return None
        return result.text() if result.ok else None

    def _linux(self, ctx: CollectContext, facts: facts_pb2.ClockFacts) -> None:
        notes: list[str] = []
        text = self._run(ctx, ["timedatectl", "show"])
        if text:
            props = parse_timedatectl_show(text)
            if "NTPSynchronized" in props:
                facts.sync_known = True
                facts.synchronized = props["NTPSynchronized"] == "yes"
                facts.sync_source = "systemd-timesyncd" if props.get("NTP") == "yes" else ""
                notes.append(f"timedatectl: NTPSynchronized={props['NTPSynchronized']}")
        else:
            notes.append("timedatectl unavailable")
        chrony = self._run(ctx, ["chronyc", "-c", "tracking"])
        if chrony:
            with contextlib.suppress(ValueError, IndexError):
                synced, offset, ref = parse_chrony_tracking(chrony)
                facts.sync_source, facts.ntp_offset_ms = "chrony", offset
                facts.synchronized, facts.sync_known = synced, True
                notes.append(f"chrony reference {ref}")
                facts.detail = "; ".join(notes)
                return
        ntpq = self._run(ctx, ["ntpq", "-pn"])
        if ntpq:
            with contextlib.suppress(ValueError):
                synced, offset, peer = parse_ntpq_peers(ntpq)
                facts.sync_source, facts.ntp_offset_ms = "ntpd", offset
                facts.synchronized, facts.sync_known = synced, True
                notes.append(f"ntpd peer {peer or 'none selected'}")
        if not facts.sync_known:
            notes.append("no time sync daemon answered (no timedatectl/chronyc/ntpq)")
            try:
                synced, max_error_ms = kernel_clock()
            except OSError as exc:
                notes.append(f"adjtimex failed: {exc}")
            else:
                facts.synchronized, facts.sync_known = synced, True
                state = "synchronised" if synced else "not synchronised (nothing disciplines the clock)"
                notes.append(f"kernel (adjtimex): {state}, maximum error {max_error_ms:g} ms")
        facts.detail = "; ".join(notes)

    def _windows(self, ctx: CollectContext, facts: facts_pb2.ClockFacts) -> None:
        text = self._run(ctx, ["w32tm", "/query", "/status"])
        if text is None:
            facts.detail = "w32tm /query /status failed or is missing (service stopped?)"
            return
        synced, source, detail = parse_w32tm_status(text)
        facts.sync_source = "w32time"
        facts.synchronized, facts.sync_known, facts.detail = synced, True, detail
        if source:
            facts.detail = f"source {source}; {detail}"[:500]

    def _macos(self, ctx: CollectContext, facts: facts_pb2.ClockFacts) -> None:
        text = self._run(ctx, ["systemsetup", "-getusingnetworktime"])
        if text and ":" in text:
            facts.sync_source = "timed"
            facts.sync_known = True
            facts.synchronized = text.split(":", 1)[1].strip().lower() == "on"
            facts.detail = "network time enabled (offset not reported by macOS)"
        else:
            facts.detail = "unknown: systemsetup needs admin rights; macOS reports no offset"


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> (Linux; the 11 trailing ints are reserved)."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    )


_NTP_MAXERROR_US = 16_000_000  # the kernel's ceiling: maxerror sits there when nothing disciplines the clock


def kernel_clock() -> tuple[bool, float]:
    """(synchronised, maximum error in ms) from ``adjtimex(2)`` with modes 0: reads, never sets.

    Synchronised as systemd (timedatectl's NTPSynchronized) judges it: the maximum error
    is below the kernel's 16 s ceiling. STA_UNSYNC is not looked at: NTP daemons set it
    on purpose to keep the kernel from writing the hardware clock. Linux only; OSError
    when the call fails or libc has no adjtimex.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    adjtimex = getattr(libc, "adjtimex", None)
    if adjtimex is None:
        raise OSError("libc has no adjtimex")
    tx = _Timex()  # modes = 0: query only, no privilege needed
    state = adjtimex(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: {os.strerror(err)}")
    return tx.maxerror < _NTP_MAXERROR_US, tx.maxerror / 1000.0  # microseconds


def _timezone() -> str:
    local = dt.datetime.now().astimezone()
    return local.tzname() or str(local.utcoffset())
