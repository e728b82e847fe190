"""Analysis: findings (rules), timeline and onset, diff, and reports — offline, on the agent.

Typical use::

    view = BundleView.from_file(path)              # verifies the bundle first
    a = analyse(view)                              # findings + timeline, logs read once
    html = render_html(a)
    members = seal_outputs(view)                   # findings.json + report.html for the writer

Plugins add rules by subclassing ``Rule`` and registering the class under the
``casefile.analyzers`` entry point group. ``report_text`` (rich) is imported only by
CLIs, never from here.
"""

from __future__ import annotations

from agent.analysis.analysis import Analysis, analyse
from agent.analysis.diff import Change, DiffResult, DiffSection, diff_bundles, render_diff_text
from agent.analysis.errors import AnalysisError, DifferentHostsError
from agent.analysis.findings import (
    ENTRY_POINT_GROUP,
    EXIT_CRITICAL,
    EXIT_OK,
    EXIT_WARNING,
    BrokenRule,
    FindingsResult,
    Rule,
    RuleRegistry,
    build_rule_registry,
    exit_code_for,
    registered_rules,
    rule_problems,
    run_rules,
)
from agent.analysis.model import SEVERITIES, Evidence, Finding, LogEvidence, Severity
from agent.analysis.outputs import seal_outputs
from agent.analysis.report_html import render_html
from agent.analysis.templates import template_of
from agent.analysis.timeline import Onset, Timeline, build_timeline, detect_onset, parse_interval
from agent.analysis.view import BundleView, LogRecord, parse_log_line

__all__ = [
    "ENTRY_POINT_GROUP",
    "EXIT_CRITICAL",
    "EXIT_OK",
    "EXIT_WARNING",
    "SEVERITIES",
    "Analysis",
    "AnalysisError",
    "BrokenRule",
    "BundleView",
    "Change",
    "DiffResult",
    "DiffSection",
    "DifferentHostsError",
    "Evidence",
    "Finding",
    "FindingsResult",
    "LogEvidence",
    "LogRecord",
    "Onset",
    "Rule",
    "RuleRegistry",
    "Severity",
    "Timeline",
    "analyse",
    "build_rule_registry",
    "build_timeline",
    "detect_onset",
    "diff_bundles",
    "exit_code_for",
    "parse_interval",
    "parse_log_line",
    "registered_rules",
    "render_diff_text",
    "render_html",
    "rule_problems",
    "run_rules",
    "seal_outputs",
    "template_of",
]
