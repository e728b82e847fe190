"""The flight recorder's history in the bundle: the report's "Before the collection" section,
and the same history as a few lines of text for the console (``recorded_text``)."""

from __future__ import annotations

import html
import math

from agent.analysis.charts import Series, line_chart
from agent.analysis.metric_onset import MetricOnset, metric_onsets, recorded_series
from agent.analysis.model import format_utc
from protos import facts_pb2

__all__ = ["recorded_section", "recorded_text"]

_BLOCKS = " ▁▂▃▄▅▆▇█"


def _when(ts: float, days: bool) -> str:
    """14:05 UTC, or 12-03 14:05 UTC on a chart of more than a day."""
    text = format_utc(ts, seconds=False) or ""
    return (text[5:16].replace("T", " ") if days else text[11:16]) + " UTC"


def _column(h: facts_pb2.RecordedHistory, metric: str) -> tuple[float, ...] | None:
    for s in h.series:
        if s.metric == metric:
            # A gap (NaN: not measured in that sample) is drawn at 0, never as a broken path.
            return tuple(0.0 if math.isnan(v) else v for v in s.values)
    return None


def recorded_section(s: facts_pb2.Snapshot, incident_at: float | None = None) -> str:
    """The recorded charts, marked at each metric onset and at ``incident_at`` (the log onset)."""
    h = s.recorded_history
    head = '<section id="recorded"><h2>Before the collection (flight recorder)</h2>'
    if len(h.at_unix) < 2:
        why = h.detail or "fewer than two recorded samples in the window"
        return f'{head}<p class="empty">{html.escape(why)}</p></section>'
    t = list(h.at_unix)
    cpu = [
        Series(label, col, color)
        for label, metric, color in (
            ("user", "cpu.user_pct", "#3b6ea5"),
            ("system", "cpu.system_pct", "#b3261e"),
            ("iowait", "cpu.iowait_pct", "#a15c00"),
            ("steal", "cpu.steal_pct", "#6d6d6d"),
        )
        if (col := _column(h, metric)) is not None
    ]
    parts = [head, f"<p>{len(t)} samples recorded on the machine before and up to this collection.</p>"]
    onsets = metric_onsets(h)
    days = t[-1] - t[0] > 86400
    markers = [(o.at_unix, f"{o.metric.split(' ')[0]} {o.kind} {_when(o.at_unix, days)}") for o in onsets]
    if incident_at is not None:
        markers.append((incident_at, f"log onset {_when(incident_at, days)}"))
    markers.sort()
    if onsets:
        items = "".join(
            f"<li>{html.escape(o.describe())} {'from' if o.kind == 'rise' else 'at'} "
            f"{html.escape(format_utc(o.at_unix) or '')}</li>"
            for o in onsets
        )
        parts.append(f'<ul class="onsets">{items}</ul>')
    if cpu:
        parts.append(line_chart("CPU % (recorded)", t, cpu, unit="%", y_max=100, y_title="% of all CPUs",
                                markers=markers))
    used, total = _column(h, "mem.used_bytes"), _column(h, "mem.total_bytes")
    swap, swap_total = _column(h, "swap.used_bytes"), _column(h, "swap.total_bytes")
    mem: list[Series] = []
    if used and total:
        mem.append(
            Series("memory", tuple(100.0 * u / m if m else 0.0 for u, m in zip(used, total, strict=True)), "#2e7d32")
        )
    if swap and swap_total:
        mem.append(
            Series("swap", tuple(100.0 * u / m if m else 0.0 for u, m in zip(swap, swap_total, strict=True)), "#7b1fa2")
        )
    if mem:
        parts.append(line_chart("Memory and swap % (recorded)", t, mem, unit="%", y_max=100, y_title="% of total",
                                markers=markers))
    parts.append("</section>")
    return "".join(parts)


def recorded_text(h: facts_pb2.RecordedHistory, incident_at: float | None = None, width: int = 60) -> list[str]:
    """CPU, memory and swap over the recorded window as one bar line each (the highest
    value in each column), with a line of ``^`` under each onset and the incident; [] when
    fewer than two samples were recorded."""
    t = list(h.at_unix)
    if len(t) < 2 or t[-1] <= t[0]:
        return []
    t0, span = t[0], t[-1] - t[0]

    def col(at: float) -> int:
        return max(0, min(width - 1, int((at - t0) / span * width)))

    days = span > 86400
    lines = [f"Recorded before the collection: {len(t)} samples, {_when(t0, True)} to {_when(t[-1], True)}"]
    for label, name in (("CPU %", "cpu"), ("memory %", "memory"), ("swap %", "swap")):
        points = recorded_series(h, name)
        if not points:
            continue
        cols: list[float | None] = [None] * width
        for at, v in points:
            i = col(at)
            cols[i] = max(cols[i] or 0.0, v)
        bar = "".join(" " if c is None else _BLOCKS[max(1, min(8, round(c / 100 * 8)))] for c in cols)
        lines.append(f"{label:>9} |{bar}| max {max(v for _, v in points):.0f}")
    marks: list[tuple[float, str]] = [(o.at_unix, _onset_label(o, days)) for o in metric_onsets(h)]
    if incident_at is not None and t0 <= incident_at <= t[-1]:
        marks.append((incident_at, f"log onset {_when(incident_at, days)}"))
    if marks:
        row = [" "] * width
        for at, _ in marks:
            row[col(at)] = "^"
        lines.append(" " * 10 + " " + "".join(row).rstrip())
        lines += [" " * 11 + "^ " + label for _, label in sorted(marks)]
    return lines


def _onset_label(o: MetricOnset, days: bool) -> str:
    return f"{o.describe()} {'from' if o.kind == 'rise' else 'at'} {_when(o.at_unix, days)}"

