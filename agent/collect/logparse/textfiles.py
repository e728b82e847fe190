"""Plain-text logs read newest first: the live file, then its rotations while needed.

``read_text_log`` reads ``path`` backwards from its end and stops at the first line
older than ``since`` (so a 200 MB file costs only the window's bytes), at the sink's
byte cap, or at the deadline. Rotated files (``x.1``, ``x.2.gz``, ``x-20261122.gz``)
are visited newest first only while the window reaches back into them; one whose
mtime (its newest line) is older than ``since`` ends the walk. A ``.gz`` cannot be
read backwards, so it is decompressed to a temp file first (bounded by ``GZ_MAX``).

Lines without a timestamp (a stack trace under its header line) are joined to the
timestamped line above them into one multi-line record; at most ``MAX_CONTINUATION``
lines, after which they become records of their own without a timestamp.

After the cap, lines are still counted (not parsed: the timestamp is checked every
``COUNT_STRIDE`` lines) until the window's start or the deadline, so ``lines_dropped``
is the number of in-window lines dropped, give or take ``COUNT_STRIDE``.
"""

from __future__ import annotations

import datetime as dt
import gzip
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from agent.collect.logparse.backwards import read_lines_backwards
from agent.collect.logparse.record import LogRecord, NewestFirstSink
from agent.collect.logparse.textlog import guess_severity, parse_text_line

__all__ = ["GZ_MAX", "ReadOutcome", "TailSpool", "read_text_log", "rotated_files"]

GZ_MAX = 512 * 1024 * 1024
MAX_CONTINUATION = 200
COUNT_STRIDE = 64
_ROTATED = re.compile(r"(?:\.\d{1,4}|-\d{8,10})(?:\.gz)?\Z")


def rotated_files(path: Path) -> list[Path]:
    """``path`` (if it exists) then its rotations, newest first by mtime."""
    found: list[tuple[float, Path]] = []
    parent = path.parent
    try:
        for candidate in parent.iterdir():
            name = candidate.name
            if name.startswith(path.name) and _ROTATED.match(name[len(path.name) :]):
                try:
                    if candidate.is_file():
                        found.append((candidate.stat().st_mtime, candidate))
                except OSError:
                    continue
    except OSError:
        pass
    found.sort(key=lambda item: item[0], reverse=True)
    head = [path] if path.is_file() else []
    return head + [p for _m, p in found]


@dataclass
class ReadOutcome:
    files: list[str] = field(default_factory=list)
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)


class _Stop(Exception):
    pass


def read_text_log(
    path: Path, sink: NewestFirstSink, *, since: dt.datetime, deadline: float, temp_dir: Path
) -> ReadOutcome:
    """Feed ``path`` and its rotations into ``sink`` newest first; see the module doc."""
    outcome = ReadOutcome()
    reader = _Reader(sink, since, deadline, outcome)
    for index, file in enumerate(rotated_files(path)):
        try:
            mtime = file.stat().st_mtime
        except OSError as exc:
            outcome.errors.append(f"{file}: {exc.strerror or exc}")
            continue
        if index > 0 and mtime < since.timestamp():
            break  # this rotation and all older ones end before the window
        outcome.files.append(str(file))
        hint = dt.datetime.fromtimestamp(mtime, dt.UTC)
        try:
            with _open_backwards(file, temp_dir) as fh:
                reader.feed(read_lines_backwards(fh), hint, None if index == 0 else file.name)
        except _Stop:
            break
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            outcome.errors.append(f"{file}: {exc}")
    reader.flush()
    return outcome


class _open_backwards:
    """A seekable binary file for ``file``; a .gz is first inflated into ``temp_dir``."""

    def __init__(self, file: Path, temp_dir: Path) -> None:
        self._file, self._temp_dir = file, temp_dir
        self._tmp: Path | None = None
        self._fh: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        if self._file.suffix != ".gz":
            self._fh = open(self._file, "rb")
            return self._fh
        self._tmp = self._temp_dir / f"inflated-{self._file.name}"
        with gzip.open(self._file, "rb") as src, open(self._tmp, "wb") as out:
            copied = 0
            while chunk := src.read(1 << 20):
                copied += len(chunk)
                if copied > GZ_MAX:
                    raise OSError(f"more than {GZ_MAX >> 20} MiB uncompressed; not read")
                out.write(chunk)
        self._fh = open(self._tmp, "rb")
        return self._fh

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


class _Reader:
    def __init__(self, sink: NewestFirstSink, since: dt.datetime, deadline: float, outcome: ReadOutcome) -> None:
        self.sink, self.since, self.deadline, self.outcome = sink, since, deadline, outcome
        self.pending: list[str] = []  # continuation lines, newest first
        self.counting = False
        self.seen = 0

    def feed(self, lines: Iterator[tuple[int, bytes]], hint: dt.datetime, rotated: str | None) -> None:
        for offset, raw in lines:
            self.seen += 1
            if self.seen % 256 == 0 and time.monotonic() > self.deadline:
                self.outcome.timed_out = True
                raise _Stop
            if not raw:
                continue
            if self.counting:
                self._count(raw, hint)
                continue
            text = raw.decode("utf-8", "replace")
            ts, sev, rest = parse_text_line(text, year_hint=hint)
            if ts is None:
                self.pending.append(text)
                if len(self.pending) > MAX_CONTINUATION:
                    self.flush()
                continue
            if ts < self.since:
                self.pending.clear()  # they belong to a line outside the window
                raise _Stop
            if self.pending:
                rest = rest + "\n" + "\n".join(reversed(self.pending))
                self.pending.clear()
            extra: dict[str, str | int] = {"off": offset}
            if rotated:
                extra["file"] = rotated
            record = LogRecord(ts=ts, sev=sev or guess_severity(rest), msg=rest, extra=extra)
            if not self.sink.add(record):
                self.counting = True

    def _count(self, raw: bytes, hint: dt.datetime) -> None:
        self.sink.dropped()
        if self.sink.lines_dropped % COUNT_STRIDE == 0:
            ts, _sev, _rest = parse_text_line(raw.decode("utf-8", "replace"), year_hint=hint)
            if ts is not None and ts < self.since:
                raise _Stop

    def flush(self) -> None:
        """Continuation lines with no header in reach become records of their own."""
        for text in self.pending:
            if not self.counting and not self.sink.add(LogRecord(ts=None, sev=guess_severity(text), msg=text)):
                self.counting = True
            elif self.counting:
                self.sink.dropped()
        self.pending.clear()


class TailSpool:
    """Keeps the newest ``keep`` (to ``2 * keep``) bytes of a forward stream on disk.

    For sources that print oldest first (``log show``): lines go to one of two files,
    switching (and emptying the other) each time one passes ``keep`` bytes; reading
    back goes newest first through both.
    """

    def __init__(self, temp_dir: Path, name: str, keep: int) -> None:
        self._paths = (temp_dir / f"{name}.tail0", temp_dir / f"{name}.tail1")
        self._keep = keep
        self._current = 0
        self._fh: BinaryIO = open(self._paths[0], "wb")  # noqa: SIM115 - closed in close()
        open(self._paths[1], "wb").close()
        self._size = 0
        self.dropped_lines = 0
        self._lines_in = [0, 0]

    def write_line(self, line: bytes) -> None:
        if self._size >= self._keep:
            self._fh.close()
            self._current ^= 1
            self.dropped_lines += self._lines_in[self._current]
            self._lines_in[self._current] = 0
            self._fh = open(self._paths[self._current], "wb")  # noqa: SIM115
            self._size = 0
        self._fh.write(line.rstrip(b"\n") + b"\n")
        self._size += len(line) + 1
        self._lines_in[self._current] += 1

    def newest_first(self) -> Iterator[bytes]:
        self._fh.close()
        for index in (self._current, self._current ^ 1):
            with open(self._paths[index], "rb") as fh:
                for _offset, line in read_lines_backwards(fh):
                    if line:
                        yield line

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        for p in self._paths:
            p.unlink(missing_ok=True)
