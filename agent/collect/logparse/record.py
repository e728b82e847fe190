"""One log line as the bundle carries it, and the sink that writes a source's artifact.

The artifact contract (protos/facts.proto above ``LogsFacts``): ``logs/<source>.jsonl``,
one JSON object per line, ``{"ts", "src", "sev", "msg", "n", ...}``, oldest first, and
when a cap cuts, the *newest* lines are the ones kept. Every source therefore hands its
records to a ``NewestFirstSink`` newest first (``journalctl -r``, a file read backwards,
``wevtutil /rd:true``), so a cap simply stops the source; ``finish`` reverses the
spooled lines into the final file. Memory stays bounded: lines go straight to disk.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.collect.logparse.backwards import read_lines_backwards
from protos import facts_pb2

__all__ = ["SEVERITIES", "LogRecord", "NewestFirstSink", "format_ts"]

SEVERITIES: tuple[str, ...] = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
# Longer messages are cut (a stack trace or a binary blob should not eat the source's cap).
MAX_MSG_CHARS = 16 * 1024


def format_ts(ts: dt.datetime) -> str:
    """UTC, microseconds, ``Z``: the one timestamp form in artifacts."""
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LogRecord:
    ts: dt.datetime | None  # aware; None when no timestamp could be read
    sev: str | None  # one of SEVERITIES or None
    msg: str
    n: int | None = None
    extra: Mapping[str, str | int | list[str]] = field(default_factory=dict)

    def to_json(self, src: str) -> bytes:
        msg = self.msg if len(self.msg) <= MAX_MSG_CHARS else self.msg[:MAX_MSG_CHARS] + "…"
        obj: dict[str, object] = {
            "ts": None if self.ts is None else format_ts(self.ts),
            "src": src,
            "sev": self.sev,
            "msg": msg,
        }
        if self.n is not None:
            obj["n"] = self.n
        obj.update(self.extra)
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class NewestFirstSink:
    """Takes one source's records newest first, up to a byte cap, and writes the artifact.

    ``add`` returns False once the cap is reached (the record is not kept); the
    source then stops, or counts what it drops with ``dropped()``.
    """

    def __init__(self, name: str, spool: Path, max_bytes: int) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self._spool_path = spool
        self._spool = open(spool, "wb")  # noqa: SIM115 - closed in finish()
        self.bytes = 0
        self.lines = 0
        self.lines_dropped = 0
        self.truncated = False
        self.severity_counts: Counter[str] = Counter()
        self.event_id_counts: Counter[str] = Counter()
        self.newest: dt.datetime | None = None
        self.oldest: dt.datetime | None = None

    @property
    def full(self) -> bool:
        return self.truncated

    def add(self, record: LogRecord) -> bool:
        if self.truncated:
            self.lines_dropped += 1
            return False
        line = record.to_json(self.name)
        if self.bytes + len(line) > self.max_bytes:
            self.truncated = True
            self.lines_dropped += 1
            return False
        self._spool.write(line)
        self.bytes += len(line)
        self.lines += 1
        if record.sev is not None:
            self.severity_counts[record.sev] += 1
        if record.ts is not None:
            if self.newest is None or record.ts > self.newest:
                self.newest = record.ts
            if self.oldest is None or record.ts < self.oldest:
                self.oldest = record.ts
        return True

    def dropped(self, count: int = 1) -> None:
        """Lines the source skipped after the cap without building records for them."""
        self.truncated = True
        self.lines_dropped += count

    def finish(self, dest: Path) -> None:
        """Write the kept lines, oldest first, to ``dest``; the spool is removed."""
        self._spool.close()
        with open(self._spool_path, "rb") as src, open(dest, "wb") as out:
            for _offset, line in read_lines_backwards(src):
                if line:
                    out.write(line + b"\n")
        self._spool_path.unlink(missing_ok=True)

    def discard(self) -> None:
        self._spool.close()
        self._spool_path.unlink(missing_ok=True)

    def fill(self, source: facts_pb2.LogSource) -> None:
        source.lines = self.lines
        source.bytes = self.bytes
        source.truncated = self.truncated
        source.lines_dropped = self.lines_dropped
        if self.oldest is not None:
            source.first_ts.FromDatetime(self.oldest.astimezone(dt.UTC))
        if self.newest is not None:
            source.last_ts.FromDatetime(self.newest.astimezone(dt.UTC))
        source.severity_counts.update(dict(self.severity_counts))
        source.event_id_counts.update(dict(self.event_id_counts))
