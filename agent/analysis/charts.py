"""Inline SVG charts for the HTML report: no script, no external asset, text escaped.

Every chart scales to its container (``viewBox`` + ``width: 100%``), so it reads on
a phone as well as on a desktop.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from agent.analysis.model import format_utc

__all__ = ["Series", "bar_chart", "line_chart", "stacked_histogram"]

_W, _H = 640, 216
# Room on the left for the axis title and labels such as "100%" or "1.5G B/s", and at
# the bottom for the time labels and the axis title under them: nothing is clipped.
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 72, 14, 12, 42
_CHAR_W = 6.5  # width of an 11 px axis glyph, for keeping labels inside the frame


@dataclass(frozen=True)
class Series:
    label: str
    values: tuple[float, ...]
    color: str


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _fmt(v: float) -> str:
    if v >= 1e9:
        return f"{v / 1e9:.1f}G"
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def _hhmm(ts: float) -> str:
    text = format_utc(ts, seconds=False) or ""
    return text[11:16]


def _anchor(x: float, label: str) -> str:
    """Centred under its point, unless that would push the label out of the frame."""
    half = len(label) * _CHAR_W / 2
    if x + half > _W - 2:
        return "end"
    if x - half < 2:
        return "start"
    return "middle"


def _frame(
    title: str,
    y_max: float,
    unit: str,
    body: list[str],
    x_labels: list[tuple[float, str]],
    *,
    y_title: str,
    x_title: str,
) -> str:
    plot_h = _H - _PAD_T - _PAD_B
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{_esc(title)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{_esc(title)}</title>",
    ]
    sep = " " if unit and unit != "%" else ""
    for frac in (0.0, 0.5, 1.0):
        y = _PAD_T + plot_h * (1 - frac)
        parts.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{_PAD_L - 4}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
                     f"{_esc(_fmt(y_max * frac))}{sep}{_esc(unit)}</text>")
    for x, label in x_labels:
        parts.append(f'<text x="{x:.1f}" y="{_PAD_T + plot_h + 16:.1f}" class="axis" '
                     f'text-anchor="{_anchor(x, label)}">{_esc(label)}</text>')
    # Axis titles: what the numbers count, and in what unit.
    parts.append(f'<text transform="rotate(-90)" x="{-(_PAD_T + plot_h / 2):.1f}" y="12" class="axis" '
                 f'text-anchor="middle">{_esc(y_title)}</text>')
    parts.append(f'<text x="{_PAD_L + (_W - _PAD_L - _PAD_R) / 2:.1f}" y="{_H - 6}" class="axis" '
                 f'text-anchor="middle">{_esc(x_title)}</text>')
    parts += body
    parts.append("</svg>")
    return "".join(parts)


def _x_labels(times: Sequence[float], xs: Sequence[float], count: int = 5) -> list[tuple[float, str]]:
    if not times:
        return []
    step = max(1, len(times) // count)
    if times[-1] - times[0] > 86400:  # days on the axis (a week of recorded history): the date too
        return [(xs[i], (format_utc(times[i], seconds=False) or "")[5:16].replace("T", " ")) for i in
                range(0, len(times), step)]
    return [(xs[i], _hhmm(times[i])) for i in range(0, len(times), step)]


def _vertical(x: float, label: str, right: bool, row: int = 0) -> list[str]:
    """A dashed marker line with its label (an onset, an incident)."""
    plot_h = _H - _PAD_T - _PAD_B
    anchor, dx = ("end", -4) if right else ("start", 4)
    return [f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_PAD_T}" y2="{_PAD_T + plot_h}" class="onset"/>',
            f'<text x="{x + dx:.1f}" y="{_PAD_T + 26 + 14 * row}" class="onset-label" text-anchor="{anchor}">'
            f"{_esc(label)}</text>"]


def line_chart(title: str, times: Sequence[float], series: Sequence[Series], *, unit: str = "",
               y_max: float | None = None, y_title: str = "",
               markers: Sequence[tuple[float, str]] = ()) -> str:
    """Lines over time; ``y_max`` fixes the scale (100 for percentages); ``markers`` are
    (time, label) lines drawn at the sample nearest each time inside the span."""
    top = y_max or max([v for s in series for v in s.values] + [1.0])
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    n = max(len(times), 2)
    xs = [_PAD_L + plot_w * i / (n - 1) for i in range(len(times))]
    body: list[str] = []
    for s in series:
        pts = " ".join(f"{xs[i]:.1f},{_PAD_T + plot_h * (1 - min(v, top) / top):.1f}" for i, v in enumerate(s.values))
        body.append(f'<polyline points="{pts}" fill="none" stroke="{_esc(s.color)}" stroke-width="2"/>')
    for row, (at, label) in enumerate(m for m in markers if times and times[0] <= m[0] <= times[-1]):
        i = min(range(len(times)), key=lambda j: abs(times[j] - at))
        body += _vertical(xs[i], label, i > len(times) * 0.6, row)
    legend_x = _PAD_L + 6
    for s in series:
        body.append(f'<rect x="{legend_x}" y="{_PAD_T + 2}" width="10" height="10" fill="{_esc(s.color)}"/>')
        body.append(f'<text x="{legend_x + 14}" y="{_PAD_T + 11}" class="legend">{_esc(s.label)}</text>')
        legend_x += 18 + 7 * len(s.label)
    return _frame(title, top, unit, body, _x_labels(times, xs), y_title=y_title or unit, x_title="time (UTC)")


def stacked_histogram(title: str, starts: Sequence[float], stacks: Sequence[Series], *,
                      marker: int | None = None, marker_label: str = "", y_title: str = "lines per interval",
                      bands: Sequence[tuple[int, int]] = ()) -> str:
    """Stacked bars per interval (errors over warnings), with an optional onset marker and
    shaded ``bands`` (first and last interval index of each earlier burst, class ``episode``)."""
    totals = [sum(s.values[i] for s in stacks) for i in range(len(starts))]
    top = max([*totals, 1.0])
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    n = max(len(starts), 1)
    bar = plot_w / n
    xs = [_PAD_L + bar * (i + 0.5) for i in range(len(starts))]
    body: list[str] = []
    for first, last in bands:
        if 0 <= first <= last < len(starts):
            body.append(f'<rect x="{_PAD_L + bar * first:.2f}" y="{_PAD_T}" width="{bar * (last - first + 1):.2f}" '
                        f'height="{plot_h}" class="episode"/>')
    for i in range(len(starts)):
        base = 0.0
        for s in stacks:
            v = s.values[i]
            if v <= 0:
                continue
            h = plot_h * v / top
            y = _PAD_T + plot_h * (1 - (base + v) / top)
            body.append(f'<rect x="{_PAD_L + bar * i:.2f}" y="{y:.2f}" width="{max(bar - 0.5, 0.5):.2f}" '
                        f'height="{h:.2f}" fill="{_esc(s.color)}"/>')
            base += v
    if marker is not None and 0 <= marker < len(starts):
        x = _PAD_L + bar * marker
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_PAD_T}" y2="{_PAD_T + plot_h}" class="onset"/>')
        anchor = "start" if marker < len(starts) * 0.6 else "end"
        dx = 4 if anchor == "start" else -4
        body.append(f'<text x="{x + dx:.1f}" y="{_PAD_T + 12}" class="onset-label" text-anchor="{anchor}">'
                    f"{_esc(marker_label)}</text>")
    legend_x = _PAD_L + 6
    for s in stacks:
        body.append(f'<rect x="{legend_x}" y="{_PAD_T + 18}" width="10" height="10" fill="{_esc(s.color)}"/>')
        body.append(f'<text x="{legend_x + 14}" y="{_PAD_T + 27}" class="legend">{_esc(s.label)}</text>')
        legend_x += 18 + 7 * len(s.label)
    return _frame(title, top, "", body, _x_labels(starts, xs), y_title=y_title, x_title="interval start (UTC)")


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], *, color: str = "#3b6ea5",
              y_title: str = "files", x_title: str = "fragments per file") -> str:
    """Vertical bars with a label under each (the fragmentation distribution)."""
    top = max([*values, 1.0]) * 1.15  # headroom: the tallest bar's value label stays inside
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    n = max(len(values), 1)
    bar = plot_w / n
    body: list[str] = []
    for i, v in enumerate(values):
        h = plot_h * v / top
        x = _PAD_L + bar * i + bar * 0.15
        body.append(f'<rect x="{x:.1f}" y="{_PAD_T + plot_h - h:.1f}" width="{bar * 0.7:.1f}" height="{h:.1f}" '
                    f'fill="{_esc(color)}"/>')
        body.append(f'<text x="{x + bar * 0.35:.1f}" y="{_PAD_T + plot_h - h - 3:.1f}" class="axis" '
                    f'text-anchor="middle">{_esc(_fmt(v))}</text>')
    labels_at = [(_PAD_L + bar * (i + 0.5), label) for i, label in enumerate(labels)]
    return _frame(title, top, "", body, labels_at, y_title=y_title, x_title=x_title)
