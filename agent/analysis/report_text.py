"""The terminal report: findings first, then key facts, in rich tables at most 100 columns wide.

The only analysis module that imports rich; the agent daemon never loads it.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.analysis.analysis import Analysis
from agent.analysis.diff import DiffResult, render_diff_text
from agent.analysis.model import Evidence, LogEvidence, format_utc
from agent.analysis.report_crashes import bundle_trigger, trigger_line
from agent.analysis.report_recorded import recorded_text
from agent.analysis.timeline import Timeline, format_duration

__all__ = ["WIDTH", "print_diff", "print_findings", "print_report", "print_timeline"]

WIDTH = 100
_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def _evidence_text(e: Evidence | LogEvidence) -> str:
    if isinstance(e, Evidence):
        return f"{e.fact_path} = {e.value}"
    return f"{e.source}:{e.line_no if e.line_no is not None else '?'} {e.ts or ''} {e.text}"[:300]


def print_findings(a: Analysis, console: Console) -> None:
    r = a.findings
    if not r.findings:
        console.print("[green]No findings[/]: no rule found a problem.")
        return
    t = Table("sev", "finding", "evidence / next step", title="Findings", title_justify="left", width=WIDTH,
              show_lines=True)
    for f in r.findings:
        detail = Text()
        for e in f.evidence[:4]:
            detail.append(_evidence_text(e) + "\n", style="dim")
        detail.append("→ " + f.next_step)
        t.add_row(Text(f.severity, style=_STYLE[f.severity]), Text(f"{f.title}\n", style="bold") + Text(f.code, "dim"),
                  detail)
    console.print(t)


def print_timeline(tl: Timeline, console: Console, *, bars: bool = True) -> None:
    # Log text goes in as Text, never as markup: "[error]" or "[client 10.0.0.5]" would vanish.
    console.print(Text("Timeline: ", style="bold") + Text(tl.summary))
    if tl.onset and tl.onset.templates:
        t = Table("count", "message template (since the onset; first line of each, in time order)", width=WIDTH,
                  title_justify="left")
        for g in tl.onset.templates:
            cell = Text(g.template)
            if g.example is not None:
                cell.append("\n" + _evidence_text(g.example), style="dim")
            t.add_row(str(g.count), cell)
        console.print(t)
    if tl.episodes:
        e = Table("episode (UTC)", "until", "lines", width=WIDTH, box=None, title="Earlier bursts that ended",
                  title_justify="left")
        for ep in tl.episodes[-10:]:
            e.add_row(_minute(ep.start), _minute(ep.end)[11:], str(ep.count))
        console.print(e)
    if bars and tl.buckets:
        top = max(b.alarming for b in tl.buckets) or 1
        shown = [b for b in tl.buckets if b.alarming][-40:]
        t = Table("interval (UTC)", "err", "warn", "", width=WIDTH, box=None,
                  title=f"errors+warnings per {format_duration(tl.interval_s)} (non-empty, last 40)",
                  title_justify="left")
        for b in shown:
            mark = " ◀ onset" if tl.onset and b.start == tl.onset.bucket_start else ""
            t.add_row(_minute(b.start), str(b.errors), str(b.warnings),
                      "█" * max(1, round(50 * b.alarming / top)) + mark)
        console.print(t)


def _minute(ts: float) -> str:
    return (format_utc(ts) or "")[:16].replace("T", " ")


def print_report(a: Analysis, console: Console) -> None:
    s = a.view.snapshot
    h, c, m = s.host, s.cpu, s.memory
    up = format_duration(h.uptime_seconds)
    console.print(Text(f"{a.view.hostname or 'unknown host'}", style="bold")
                  + Text(f" — {h.os_release or h.os} (kernel {h.kernel}, {h.arch}), up {up}"))
    if (trigger := bundle_trigger(s, a.view.manifest.spec if a.view.manifest else None)) is not None:
        console.print(Text(trigger_line(trigger), style="bold"), highlight=False)
    print_findings(a, console)
    print_timeline(a.timeline, console, bars=False)
    onset = a.timeline.onset
    incident = None if onset is None else onset.began_at - a.timeline.clock_offset_s
    for line in recorded_text(s.recorded_history, incident):
        console.print(Text(line), highlight=False)
    console.print(f"CPU {c.total_percent:.0f}% of {c.logical_count} cores, load {c.load1:.2f}/{c.load5:.2f}/"
                  f"{c.load15:.2f}; memory {m.percent:.0f}% of {m.total / 1024**3:.1f} GiB, swap {m.swap_percent:.0f}%")
    d = Table("mount", "fs", "GiB", "used %", "inodes %", title="Filesystems", title_justify="left", width=WIDTH)
    for p in s.disks.partitions:
        d.add_row(Text(p.mountpoint), Text(p.fstype), f"{p.total / 1024**3:.1f}", Text(p.error or f"{p.percent:.1f}"),
                  f"{100 * p.inodes_used / p.inodes_total:.1f}" if p.inodes_total else "")
    console.print(d)
    if s.network.interfaces:
        n = Table("interface", "up", "addresses", "err", "drop", title="Network", title_justify="left", width=WIDTH)
        for i in s.network.interfaces:
            n.add_row(Text(i.name), "yes" if i.is_up else "no", Text(", ".join(x.address for x in i.addresses)),
                      str(i.counters.errin + i.counters.errout), str(i.counters.dropin + i.counters.dropout))
        console.print(n)
    if s.services.failed:
        console.print(Text("Failed services: " + ", ".join(f.name for f in s.services.failed)))


def print_diff(d: DiffResult, console: Console) -> None:
    console.print(render_diff_text(d), highlight=False, markup=False, end="", soft_wrap=True)
