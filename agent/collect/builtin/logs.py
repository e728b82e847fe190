"""Logs: the last hours of every system log, bounded by time and bytes, newest kept.

Sources, by platform (each one ``LogSource`` in ``Snapshot.logs`` and, when it has
lines, one artifact ``logs/<source>.jsonl`` in the contract of protos/facts.proto):

* Linux: ``journal`` (``journalctl -o json -r --all``), ``kernel`` (``journalctl -k``, else
  ``/dev/kmsg``, else ``dmesg -r``; ring-buffer times are boot time + offset, so they
  drift by the time the machine spent suspended), and the text files in
  ``LINUX_TEXT_LOGS`` that exist (syslog, messages, auth, kern, dpkg, yum, dnf).
* Windows: System, Application and Microsoft-Windows-ReFS/Operational via ``wevtutil``.
* macOS: the unified log via ``log show --style ndjson``.
* Everywhere: files named in the ``log_files`` option, as ``file-<name>`` sources.

Options (spec ``options``; the CLI's ``--since``/``--logs-max`` set the first two; read
by ``log_bounds``, which plugins that collect logs use too, so their logs get the same
window and per-source cap; see ``agent/collect/logparse/bounds.py``):

=============================  ==========  ===============================================
``logs_since_s``               86400       the window: this many seconds back from now
``logs_max_bytes``             32 MiB      all sources together (JSONL bytes written)
``logs_max_bytes_per_source``  8 MiB       one source; 8 MiB is ~40k journal lines
``logs_priority``              ""          journalctl ``--priority`` (e.g. "warning")
``log_files``                  ""          extra text logs, comma-separated paths
=============================  ==========  ===============================================

Why these caps: 24 h of a busy server's journal is 10-50 MB of JSON; 8 MiB keeps the
newest tens of thousands of lines per source (the part a case is about) while a whole
default bundle stays well under 32 MiB before compression (zstd shrinks logs about 8 times).
Sources are read one after another, newest first, each with a fair share of the time
budget; a cap or the budget cuts the *oldest* lines, and the source says so
(``truncated``, ``lines_dropped``, ``error``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from agent.collect.builtin.logsources import (
    LINUX_TEXT_LOGS,
    WINDOWS_CHANNELS,
    PartialSource,
    SourceUnavailable,
    Window,
    journal_source,
    kernel_source,
    macos_source,
    text_source,
    windows_source,
)
from agent.collect.command import CommandNotFound
from agent.collect.framework import CollectContext, Collector, current_platform, describe_exception
from agent.collect.logparse import NewestFirstSink, log_bounds
from agent.collect.logparse.bounds import LOG_OPTIONS
from agent.collect.options import StrOption
from protos import facts_pb2

__all__ = ["LogsCollector", "plan_sources"]

# Kept back from the budget to turn the spooled lines into the artifacts.
_FINISH_MARGIN_S = 0.5

SourceFn = Callable[[NewestFirstSink, Window], str]


def _file_source_name(path: str, taken: set[str]) -> str:
    stem = re.sub(r"[^a-z0-9_.-]+", "-", Path(path).name.lower()).strip("-.") or "log"
    stem = stem.removesuffix(".log") or "log"
    name, n = f"file-{stem}", 2
    while name in taken:
        name, n = f"file-{stem}-{n}", n + 1
    return name


def plan_sources(platform: str, log_files: str) -> list[tuple[str, SourceFn]]:
    """The sources to read here, in priority order (the total cap favours the first)."""
    plan: list[tuple[str, SourceFn]] = []
    if platform == "linux":
        plan.append(("journal", journal_source))
        plan.append(("kernel", kernel_source))
        for name, candidates in LINUX_TEXT_LOGS:
            found = next((Path(c) for c in candidates if Path(c).exists()), None)
            if found is not None:
                plan.append((name, _bind_text(found)))
    elif platform == "windows":
        for name, channel in WINDOWS_CHANNELS:
            plan.append((name, _bind_channel(channel)))
    elif platform == "darwin":
        plan.append(("unified", macos_source))
    taken = {name for name, _fn in plan}
    for raw in log_files.split(","):
        path = raw.strip()
        if path:
            name = _file_source_name(path, taken)
            taken.add(name)
            plan.append((name, _bind_text(Path(path))))
    return plan


def _bind_text(path: Path) -> SourceFn:
    def read(sink: NewestFirstSink, window: Window) -> str:
        return text_source(sink, window, path)

    return read


def _bind_channel(channel: str) -> SourceFn:
    def read(sink: NewestFirstSink, window: Window) -> str:
        return windows_source(sink, window, channel)

    return read


PRIORITY = StrOption(
    "logs_priority", "", "journalctl --priority, e.g. warning", shown_default="all priorities", max_chars=16
)
LOG_FILES = StrOption("log_files", "", "extra text logs to read, comma-separated paths", shown_default="none")


class LogsCollector(Collector):
    name = "logs"
    description = "System logs of the last hours (journal, kernel, /var/log, Event Log, unified log)"
    budget_s = 8.0
    facts_field = "logs"
    facts_type = facts_pb2.LogsFacts

    options = (*LOG_OPTIONS, PRIORITY, LOG_FILES)

    def collect(self, ctx: CollectContext) -> facts_pb2.LogsFacts:
        bounds = log_bounds(ctx)  # the same reading plugins get through agent.collect
        total, per_source = bounds.max_bytes, bounds.max_bytes_per_source
        priority = ctx.get(PRIORITY)
        since = bounds.since()
        facts = facts_pb2.LogsFacts(max_bytes_total=total, max_bytes_per_source=per_source)
        facts.since.FromDatetime(since)
        plan = plan_sources(current_platform(), ctx.get(LOG_FILES))
        soft_deadline = ctx.deadline - min(_FINISH_MARGIN_S, ctx.remaining() * 0.15)
        # This collector's private temp directory: spools, inflated .gz files, tails.
        work_dir = ctx.temp_path("work").parent
        used = 0
        for index, (name, fn) in enumerate(plan):
            source = facts.sources.add(name=name)
            now = time.monotonic()
            share = (soft_deadline - now) / (len(plan) - index)
            window = Window(
                since=since,
                deadline=min(soft_deadline, now + max(2 * share, 0.25)),
                temp_dir=work_dir,
                priority=priority,
            )
            cap = max(0, min(per_source, total - used))
            used += self._read_source(ctx, source, fn, window, cap)
        return facts

    def _read_source(
        self,
        ctx: CollectContext,
        source: facts_pb2.LogSource,
        fn: SourceFn,
        window: Window,
        cap: int,
    ) -> int:
        name = source.name
        if window.remaining() <= 0:
            source.error = "not read: the collector's time budget was spent on earlier sources"
            return 0
        sink = NewestFirstSink(name, ctx.temp_path(f"{name}.spool"), cap)
        try:
            source.origin = fn(sink, window)
        except PartialSource as partial:
            source.origin, source.error = partial.origin, partial.reason
        except (SourceUnavailable, CommandNotFound) as exc:
            source.error = str(exc)
        except Exception as exc:  # one broken source never costs the others
            source.error = describe_exception(exc)
            ctx.warn(f"log source {name!r} failed: {source.error}")
        if cap == 0 and sink.lines_dropped:
            source.error = source.error or "not kept: the total byte cap was reached"
        sink.fill(source)
        if sink.lines == 0:
            sink.discard()
            return 0
        member = f"logs/{name}.jsonl"
        final = ctx.temp_path(f"{name}.jsonl")
        sink.finish(final)
        ctx.add_artifact_file(member, final, kind="log")
        source.artifact = member
        return sink.bytes
