"""Log parsing for the logs collector (and plugins that collect application logs).

Every parser turns one source's native lines into ``LogRecord``s; a ``NewestFirstSink``
writes them as the bundle's ``logs/<source>.jsonl`` artifact under a byte cap.
"""

from __future__ import annotations

from agent.collect.logparse.backwards import read_lines_backwards
from agent.collect.logparse.bounds import (
    LOG_SOURCES_KEY,
    LogBounds,
    log_bounds,
    log_source_entry,
    truncation_entries,
)
from agent.collect.logparse.journal import JOURNAL_FIELDS, dmesg_record, journal_record, kmsg_record
from agent.collect.logparse.platform_logs import (
    macos_record,
    parse_wevtutil_xml,
    windows_event_key,
)
from agent.collect.logparse.record import SEVERITIES, LogRecord, NewestFirstSink, format_ts
from agent.collect.logparse.textfiles import TailSpool, read_text_log, rotated_files
from agent.collect.logparse.textlog import guess_severity, parse_text_line, pri_severity

__all__ = [
    "JOURNAL_FIELDS",
    "LOG_SOURCES_KEY",
    "SEVERITIES",
    "LogBounds",
    "LogRecord",
    "NewestFirstSink",
    "TailSpool",
    "dmesg_record",
    "format_ts",
    "guess_severity",
    "journal_record",
    "kmsg_record",
    "log_bounds",
    "log_source_entry",
    "macos_record",
    "parse_text_line",
    "parse_wevtutil_xml",
    "pri_severity",
    "read_lines_backwards",
    "read_text_log",
    "rotated_files",
    "truncation_entries",
    "windows_event_key",
]
