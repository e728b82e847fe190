"""Collection: declarative collectors, their registry, and the concurrent runner.

Plugins import only from here::

    from agent.collect import Collector, CollectContext

and register their class under the ``casefile.collectors`` entry point group. A plugin
that collects a log reads the run's window and caps with ``log_bounds(ctx)`` (what
``--since``/``--logs-max`` set) and reports its log in its plugin facts with
``log_source_entry`` under ``LOG_SOURCES_KEY``, so a cut one is in the manifest's
``truncated`` list. A plugin that writes a log member of its own uses the same log
record contract (``LogRecord``, ``format_ts``), the newest-first sink that keeps the
newest lines under a cap (``NewestFirstSink``), the backward line reader
(``read_lines_backwards``) and the text-line parser (``parse_text_line``,
``guess_severity``) that the built-in logs collector and collection specs use.

A collector declares the options it reads in ``Collector.options`` (``FloatOption``,
``IntOption``, ``StrOption``, ``BoolOption``: name, default, help, bounds) and reads one
with ``ctx.get(OPTION)``; one that collects a log lists ``LOG_OPTIONS`` (the run's window
and caps) among them. ``casefile collect --set`` accepts only declared names, in their
type, and ``casefile options`` lists them all, plugins' included.
"""

from __future__ import annotations

from agent.collect.artifacts import ARTIFACT_KINDS, Artifact, ArtifactKind
from agent.collect.command import (
    CommandNotFound,
    CommandResult,
    LineStream,
    run_command,
    stream_lines,
)
from agent.collect.framework import (
    ALL_PLATFORMS,
    KNOWN_PLATFORMS,
    CollectContext,
    CollectionSpec,
    Collector,
    OptionValue,
    Pending,
    current_platform,
    declaration_problems,
)
from agent.collect.logparse.backwards import read_lines_backwards
from agent.collect.logparse.bounds import LOG_OPTIONS, LOG_SOURCES_KEY, LogBounds, log_bounds, log_source_entry
from agent.collect.logparse.record import LogRecord, NewestFirstSink, format_ts
from agent.collect.logparse.textlog import guess_severity, parse_text_line
from agent.collect.options import BoolOption, FloatOption, IntOption, Option, StrOption
from agent.collect.registry import ENTRY_POINT_GROUP, BrokenPlugin, Registry, registered_collectors
from agent.collect.runner import (
    CollectionResult,
    RunningCollection,
    run_collection,
    start_collection,
    statuses_to_dicts,
)

__all__ = [
    "ALL_PLATFORMS",
    "ARTIFACT_KINDS",
    "ENTRY_POINT_GROUP",
    "KNOWN_PLATFORMS",
    "LOG_OPTIONS",
    "LOG_SOURCES_KEY",
    "Artifact",
    "ArtifactKind",
    "BoolOption",
    "BrokenPlugin",
    "CollectContext",
    "CollectionResult",
    "CollectionSpec",
    "Collector",
    "CommandNotFound",
    "CommandResult",
    "FloatOption",
    "IntOption",
    "LineStream",
    "LogBounds",
    "LogRecord",
    "NewestFirstSink",
    "Option",
    "OptionValue",
    "Pending",
    "Registry",
    "RunningCollection",
    "StrOption",
    "current_platform",
    "declaration_problems",
    "format_ts",
    "guess_severity",
    "log_bounds",
    "log_source_entry",
    "parse_text_line",
    "read_lines_backwards",
    "registered_collectors",
    "run_collection",
    "run_command",
    "start_collection",
    "statuses_to_dicts",
    "stream_lines",
]
