"""The diff as plain text: one line per change, sizes beside percentages, what was not compared.

Plain text (no markup) so that the same string serves the terminal, the collector's
Diff answer and a file; ``->`` rather than an arrow glyph, for any console encoding.
"""

from __future__ import annotations

import datetime as dt
import math

from agent.analysis.diff.model import Change, DiffResult, DiffSection, Measure, Value

__all__ = ["format_value", "render_diff_text"]

_KEY_WIDTH = 100
# Sections about one thing: their single key is the section itself and is not repeated.
_SINGLE = frozenset({"os", "cpu", "load", "memory", "swap"})
_WORDS = {
    "findings": ("new", "resolved"),
    "failed_services": ("now failed", "recovered"),
    "processes": ("new", "gone"),
}
_LABELS = {
    "used_pct": "used", "busy_pct": "busy (without the agent)", "kernel_pct": "kernel time (without the agent)",
    "iowait_pct": "I/O wait", "logical_cpus": "logical CPUs", "cpu_percent": "CPU", "rss": "RSS",
    "inodes_used_pct": "inodes used", "pct_files_fragmented": "files fragmented",
    "pct_bytes_in_fragmented": "bytes in fragmented files", "fragments_mean": "fragments per file (mean)",
    "vendor_fragmented_pct": "fragmented (defrag engine)", "free_in_small_extents_pct": "free space in small extents",
}


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_value(value: Value, unit: str = "") -> str:
    """A figure as a reader expects it: ``41.0 %``, ``12.1 GiB``, a UTC time, ``-`` for none."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if unit == "bytes":
        return _size(int(value))
    if unit == "time":
        try:
            return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (OverflowError, OSError, ValueError):  # a boot time no clock can show
            return str(value)
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "% of a core":
        return f"{value:.1f} % of a core"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _key(key: str) -> str:
    return key if len(key) <= _KEY_WIDTH else key[: _KEY_WIDTH - 1] + "…"


def _change(section: str, c: Change) -> str:
    label = _LABELS.get(c.field, c.field.replace("_", " "))
    where = label if section in _SINGLE else f"{_key(c.key)} {label}"
    line = f"  ~ {where}: {format_value(c.before, c.unit)} -> {format_value(c.after, c.unit)}"
    if c.size_before is not None and c.size_after is not None:
        line += f" ({_size(c.size_before)} -> {_size(c.size_after)})"
    return line


def _describe(figures: dict[str, Measure]) -> str:
    parts = []
    for f, m in figures.items():
        if (f == "count" and m.value == 1) or m.value in (None, "") or (m.unit == "bytes" and not m.value):
            continue
        text = format_value(m.value, m.unit)
        if m.size is not None:
            text += f" ({_size(m.size)})"
        parts.append(f"{text.removesuffix(' % of a core')} % CPU" if f == "cpu_percent"
                     else f"{_LABELS.get(f, f.replace('_', ' '))} {text}")
    return f" ({', '.join(parts)})" if parts else ""


def _section(s: DiffSection) -> list[str]:
    plus, minus = _WORDS.get(s.name, ("added", "removed"))
    lines = [f"  + {plus}: {_key(k)}{_describe(s.detail(k))}" for k in s.added]
    lines += [f"  - {minus}: {_key(k)}{_describe(s.detail(k))}" for k in s.removed]
    lines += [_change(s.name, c) for c in s.changed]
    lines += [f"  = not compared: {_key(n.key) + ': ' if n.key else ''}{n.reason}" for n in s.not_compared]
    return lines


def render_diff_text(d: DiffResult) -> str:
    """Plain text, one line per change, grouped by section."""
    lines = [
        f"diff {d.host_a} {d.bundle_a} ({d.collected_a or '?'}) -> {d.host_b} {d.bundle_b} ({d.collected_b or '?'})"
    ]
    if d.empty:
        lines.append("no differences")
    for s in d.sections:
        body = _section(s)
        if body:
            lines.append(f"{s.name.replace('_', ' ')}:")
            lines += body
    return "\n".join(lines) + "\n"
