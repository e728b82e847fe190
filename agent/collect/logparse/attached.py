"""A file attached with ``--add-file`` that reads as a text log, as a log source.

The customer attaches the file for the engineer to read, so it stays in the bundle as
``files/<name>``; when its lines carry timestamps it *also* becomes a log source like
those of the ``log_files`` option (``logs/file-<name>.jsonl``, the same parser, window
and per-source cap), so the timeline and the rules see it. Only the attached file is
read, never its rotations: a symlink in a private folder stands in for it.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
import time
from pathlib import Path

from agent.collect.logparse.record import LogRecord, NewestFirstSink
from agent.collect.logparse.textfiles import read_text_log
from protos import facts_pb2

__all__ = ["MIN_TIMED_LINES", "attached_log", "source_name"]

# Fewer timestamped lines than this, or fewer than half of the records: not a log.
MIN_TIMED_LINES = 3
_BUDGET_S = 3.0


class _CountingSink(NewestFirstSink):
    timed = 0

    def add(self, record: LogRecord) -> bool:
        kept = super().add(record)
        if kept and record.ts is not None:
            self.timed += 1
        return kept


def source_name(path: Path, taken: set[str]) -> str:
    """``file-<stem>`` as for ``log_files``, numbered when taken."""
    stem = re.sub(r"[^a-z0-9_.-]+", "-", path.name.lower()).strip("-.") or "log"
    stem = stem.removesuffix(".log") or "log"
    name, n = f"file-{stem}", 2
    while name in taken:
        name, n = f"file-{stem}-{n}", n + 1
    return name


def attached_log(
    path: Path, dest: Path, *, name: str, since: dt.datetime, max_bytes: int
) -> facts_pb2.LogSource | None:
    """Parse ``path`` into ``dest`` (bundle JSONL, raw: the privacy phase redacts it).

    Returns the source's facts, or None (and writes nothing) when the file is not a log.
    """
    with tempfile.TemporaryDirectory(prefix="casefile-attached-") as tmp:
        folder = Path(tmp)
        alone = folder / "attached" / path.name
        alone.parent.mkdir()
        alone.symlink_to(path.resolve())
        sink = _CountingSink(name, folder / "spool", max_bytes)
        outcome = read_text_log(alone, sink, since=since, deadline=time.monotonic() + _BUDGET_S, temp_dir=folder)
        if sink.timed < MIN_TIMED_LINES or 2 * sink.timed < sink.lines:
            sink.discard()
            return None
        sink.finish(dest)
    source = facts_pb2.LogSource(name=name, origin=str(path))
    sink.fill(source)
    if outcome.timed_out:
        source.error = f"read for {_BUDGET_S:.0f} s only; older lines were not read"
    elif outcome.errors:
        source.error = "; ".join(outcome.errors)
    return source
