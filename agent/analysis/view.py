"""What analysis reads: a facts Snapshot plus a lazy, re-iterable stream of log records.

The same ``BundleView`` serves a bundle file (verified first, log members streamed
from it again on each pass), a fresh collection (records already in memory) and the
collector (the stored blob). Log lines are untrusted: a line that is not a JSON object
of the documented shape is counted in ``bad_lines``, never raised.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from google.protobuf.message import DecodeError

from agent.bundle.manifest import Manifest
from agent.bundle.reader import iter_members, verify_bundle
from agent.errors import VerificationError
from agent.keys import PublicKey
from protos import facts_pb2

if TYPE_CHECKING:
    from agent.analysis.logscan import LogScan

__all__ = ["MAX_LINE_BYTES", "BundleView", "LogRecord", "parse_log_line"]

# A log line longer than this is not a log line: counted as bad, skipped.
MAX_LINE_BYTES = 64 << 10
_READ = 1 << 20
_FACTS = "facts.pb"
_SEVERITIES = frozenset({"emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"})
# Aliases seen in the wild (Windows levels, journald text); mapped once per line.
_SEV_ALIASES = {"error": "err", "warn": "warning", "critical": "crit", "fatal": "crit", "panic": "emerg"}


class LogRecord(NamedTuple):
    """One log line. A NamedTuple, not a dataclass: a million of these are made per bundle.

    ``ts`` is seconds since the epoch (UTC) as the source stamped it, or None.
    """

    ts: float | None
    src: str
    sev: str | None
    msg: str
    n: int | None


_DECODER = json.JSONDecoder()
_SECONDS: dict[str, float] = {}
_SECONDS_MAX = 1 << 16


def _parse_ts(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    # Fast path for the contract's own form, "YYYY-MM-DDTHH:MM:SS[.ffffff]Z": lines share
    # their minute with their neighbours, so the datetime work is done once per minute.
    if value[-1:] == "Z" and len(value) >= 20 and value[10] == "T" and value[16] == ":" and value[19] in ".Z":
        minute = _SECONDS.get(value[:16])
        if minute is None:
            try:
                minute = dt.datetime.fromisoformat(value[:16]).replace(tzinfo=dt.UTC).timestamp()
            except ValueError:
                return None
            if len(_SECONDS) >= _SECONDS_MAX:
                _SECONDS.clear()
            _SECONDS[value[:16]] = minute
        sec = value[17:19]
        if not sec.isdigit() or sec > "59":
            return None
        base = minute + int(sec)
        if value[19] == "Z":
            return base if len(value) == 20 else None
        frac = value[20:-1]
        return base + int(frac) / 10 ** len(frac) if frac.isdigit() and len(frac) <= 9 else None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def parse_log_line(line: bytes | str) -> LogRecord | None:
    """One JSONL line of a ``logs/<source>.jsonl`` member, or None when it is malformed."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        # raw_decode skips json.loads' encoding detection and whitespace regexes (a third of its cost).
        obj, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        return None
    if end != len(text) and text[end:].strip():
        return None
    if not isinstance(obj, dict):
        return None
    msg, src, sev, n = obj.get("msg"), obj.get("src"), obj.get("sev"), obj.get("n")
    if not isinstance(msg, str) or not isinstance(src, str):
        return None
    if sev is not None:
        if not isinstance(sev, str):
            return None
        sev = sev.lower()
        if sev not in _SEVERITIES:
            sev = _SEV_ALIASES.get(sev)
    if not isinstance(n, int) or isinstance(n, bool):
        n = None
    return LogRecord(_parse_ts(obj.get("ts")), src, sev, msg, n)


class _Counter:
    def __init__(self) -> None:
        self.bad = 0


def _records_from_stream(read: Callable[[int], bytes], counter: _Counter) -> Iterator[LogRecord]:
    """Split a byte stream into lines without ever holding more than one long line's cap."""
    rest = b""
    skipping = False  # inside an over-long line: drop bytes until its newline
    while chunk := read(_READ):
        if skipping:
            cut = chunk.find(b"\n")
            if cut < 0:
                continue
            chunk, skipping = chunk[cut + 1 :], False
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE_BYTES:
            counter.bad += 1
            rest, skipping = b"", True
        for line in lines:
            if not line.strip():
                continue
            rec = parse_log_line(line) if len(line) <= MAX_LINE_BYTES else None
            if rec is None:
                counter.bad += 1
            else:
                yield rec
    if rest.strip():
        rec = parse_log_line(rest)
        if rec is None:
            counter.bad += 1
        else:
            yield rec


def _is_log_member(path: str) -> bool:
    return path.startswith("logs/") and path.endswith(".jsonl")


class BundleView:
    """Facts plus log records, however they were obtained. Build with a ``from_*`` method."""

    def __init__(
        self,
        snapshot: facts_pb2.Snapshot,
        records: Callable[[_Counter], Iterable[LogRecord]],
        *,
        manifest: Manifest | None = None,
        label: str = "",
        has_logs: bool = False,
    ) -> None:
        self.snapshot = snapshot
        self.manifest = manifest
        self.label = label
        self.has_logs = has_logs
        self._records = records
        self._counter = _Counter()

    @classmethod
    def from_snapshot(
        cls,
        snapshot: facts_pb2.Snapshot,
        log_records: Iterable[LogRecord | dict[str, Any]] | Callable[[], Iterable[LogRecord | dict[str, Any]]] = (),
        *,
        label: str = "fresh collection",
    ) -> BundleView:
        """A view of a fresh collection. ``log_records`` is re-iterable, or a factory of iterables."""
        def records(counter: _Counter) -> Iterator[LogRecord]:
            source = log_records() if callable(log_records) else log_records
            for item in source:
                if isinstance(item, LogRecord):
                    yield item
                    continue
                rec = parse_log_line(json.dumps(item)) if isinstance(item, dict) else None
                if rec is None:
                    counter.bad += 1
                else:
                    yield rec

        has_logs = callable(log_records) or bool(log_records)
        return cls(snapshot, records, label=label, has_logs=has_logs)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], expected_key: PublicKey | None = None
    ) -> BundleView:
        """Verify the bundle (signature, hashes, paths), then read its facts; logs stream lazily."""
        verified = verify_bundle(path, expected_key=expected_key, keep=(_FACTS,))
        data = verified.kept.get(_FACTS)
        if data is None:
            raise VerificationError(
                f"bundle {os.fspath(path)} has no {_FACTS}", reason="missing-member", member=_FACTS
            )
        try:
            snapshot = facts_pb2.Snapshot.FromString(data)
        except DecodeError as exc:
            raise VerificationError(
                f"member {_FACTS}: not a Snapshot ({exc})", reason="bad-facts", member=_FACTS
            ) from None
        log_members = sorted(m.path for m in verified.members if _is_log_member(m.path))

        def records(counter: _Counter) -> Iterator[LogRecord]:
            if not log_members:
                return
            for stream in iter_members(path, verified, _is_log_member):
                yield from _records_from_stream(stream.read, counter)

        return cls(
            snapshot, records, manifest=verified.manifest, label=os.fspath(path), has_logs=bool(log_members)
        )

    def iter_logs(self) -> Iterator[LogRecord]:
        """Every log record, in member order; each call is a new pass over the source."""
        return iter(self._records(self._counter))

    @property
    def bad_lines(self) -> int:
        """Malformed log lines met so far (by every pass; a full pass counts each once)."""
        return self._counter.bad

    @property
    def hostname(self) -> str:
        return self.snapshot.host.hostname or (self.manifest.hostname if self.manifest is not None else "")

    @cached_property
    def clock_offset_s(self) -> float:
        """Add to our timestamps to get the collector's clock (0 when never measured)."""
        clock = self.snapshot.clock
        return clock.collector_offset_ms / 1000.0 if clock.collector_offset_known else 0.0

    @cached_property
    def collected_at(self) -> float | None:
        """Collection time on the corrected clock, seconds since the epoch."""
        if self.snapshot.HasField("collected_at"):
            return self.snapshot.collected_at.ToMicroseconds() / 1e6 + self.clock_offset_s
        parsed = _parse_ts(self.manifest.created_at) if self.manifest is not None else None
        return None if parsed is None else parsed + self.clock_offset_s

    @cached_property
    def log_scan(self) -> LogScan:
        """The one full pass over the logs that timeline and rules share."""
        from agent.analysis.logscan import scan_logs

        return scan_logs(self)


