"""The report's "Before the collection" section: the flight recorder's history in the bundle."""

from __future__ import annotations

import html
import math

from agent.analysis.charts import Series, line_chart
from agent.analysis.metric_onset import metric_onsets
from agent.analysis.model import format_utc
from protos import facts_pb2

__all__ = ["recorded_section"]


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
