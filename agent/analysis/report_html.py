"""The self-contained HTML report: one file, inline CSS and SVG, no script, no network.

Facts come from an untrusted machine, so every piece of text goes through ``_e``
(HTML escaping, quotes included) and nothing from the bundle is ever placed in a URL,
a style or a tag name. The page is readable on a phone: viewport meta, fluid layout,
tables that scroll sideways inside their own box.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from agent.analysis.analysis import Analysis
from agent.analysis.charts import Series, bar_chart, line_chart, stacked_histogram
from agent.analysis.model import Evidence, Finding, LogEvidence, format_utc
from agent.analysis.report_crashes import bundle_trigger, crashes_section, trigger_section
from agent.analysis.report_recorded import recorded_section
from agent.analysis.timeline import format_duration
from protos import facts_pb2

__all__ = ["render_html"]

_HIST_ORDER = ("1", "2-3", "4-9", "10-99", "100+")
_CSS = """
:root{--fg:#1d232b;--muted:#5b6570;--bg:#f6f7f9;--card:#fff;--line:#dde1e6;
--crit:#b3261e;--warn:#a15c00;--info:#2f5f98;--ok:#2e7d32}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:980px;margin:0 auto;padding:12px}
h1{font-size:1.3rem;margin:.4rem 0}h2{font-size:1.1rem;margin:1.4rem 0 .5rem;border-bottom:2px solid var(--line)}
h3{font-size:1rem;margin:.2rem 0}
.meta{color:var(--muted);font-size:.9rem;word-break:break-all}
.counts span{display:inline-block;margin:.2rem .4rem .2rem 0;padding:.15rem .55rem;border-radius:1rem;color:#fff;
font-weight:600;font-size:.85rem}
.sev-critical{background:var(--crit)}.sev-warning{background:var(--warn)}.sev-info{background:var(--info)}
.sev-none{background:var(--ok)}
.finding{background:var(--card);border:1px solid var(--line);border-left:6px solid var(--info);border-radius:6px;
margin:.6rem 0;padding:.6rem .8rem}
.finding.critical{border-left-color:var(--crit)}.finding.warning{border-left-color:var(--warn)}
.finding summary{cursor:pointer;list-style:none}.finding summary::-webkit-details-marker{display:none}
.badge{display:inline-block;padding:0 .45rem;border-radius:.6rem;color:#fff;font-size:.75rem;font-weight:700;
text-transform:uppercase;margin-right:.4rem;vertical-align:middle}
.code{color:var(--muted);font-size:.8rem}
.next{background:#eef3f9;border-radius:4px;padding:.4rem .6rem;margin:.4rem 0 0}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-size:.88rem;background:var(--card)}
th,td{border:1px solid var(--line);padding:.25rem .45rem;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#eef0f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.log{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.82rem;word-break:break-word}
.chart{width:100%;height:auto;background:var(--card);border:1px solid var(--line);border-radius:6px;margin:.3rem 0}
.chart .grid{stroke:#e5e8ec;stroke-width:1}.chart .axis{font-size:11px;fill:var(--muted)}
.chart .legend{font-size:11px;fill:var(--fg)}.chart .onset{stroke:var(--crit);stroke-width:2;stroke-dasharray:4 3}
.chart .onset-label{font-size:12px;fill:var(--crit);font-weight:700}
.empty{color:var(--muted);font-style:italic}
caption{text-align:left;color:var(--muted);font-size:.85rem;padding:.2rem 0}
pre.log{background:var(--card);border:1px solid var(--line);padding:.4rem;overflow-x:auto;white-space:pre-wrap}
@media (max-width:600px){body{font-size:14px}main{padding:8px}th,td{padding:.2rem .3rem}}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    if not body:
        return '<p class="empty">none</p>'
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f}"


def _evidence(items: Sequence[Evidence | LogEvidence]) -> str:
    facts = [(e.fact_path, e.value) for e in items if isinstance(e, Evidence)]
    logs = [e for e in items if isinstance(e, LogEvidence)]
    out = ""
    if facts:
        out += _table(("fact", "value"), facts)
    if logs:
        out += _table(
            ("source", "line", "time (UTC)", "text"),
            ((e.source, e.line_no if e.line_no is not None else "", e.ts or "", e.text) for e in logs),
        )
    return out


def _finding(f: Finding) -> str:
    return (
        f'<details class="finding {_e(f.severity)}" open><summary><span class="badge sev-{_e(f.severity)}">'
        f"{_e(f.severity)}</span><strong>{_e(f.title)}</strong> <span class=\"code\">{_e(f.code)}</span>"
        f"</summary><p>{_e(f.explanation)}</p>{_evidence(f.evidence)}"
        f'<p class="next"><strong>Next step:</strong> {_e(f.next_step)}</p></details>'
    )


def _findings(a: Analysis) -> str:
    r = a.findings
    counts = "".join(
        f'<span class="sev-{s}">{r.count(s)} {s}</span>' for s in ("critical", "warning", "info") if r.count(s)
    ) or '<span class="sev-none">no findings</span>'
    body = "".join(_finding(f) for f in r.findings) or '<p class="empty">No rule found a problem.</p>'
    return f'<section id="findings"><h2>Findings</h2><p class="counts">{counts}</p>{body}</section>'


def _sync(clock: facts_pb2.ClockFacts) -> str:
    if not clock.sync_known:
        return "sync unknown"
    return "synchronised" if clock.synchronized else "not synchronised"


def _host(s: facts_pb2.Snapshot, a: Analysis) -> str:
    h, c, m = s.host, s.cpu, s.memory
    rows = [
        ("host", h.hostname or a.view.hostname),
        ("OS", f"{h.os_release or h.os} {h.os_version}".strip()),
        ("kernel / arch", f"{h.kernel} / {h.arch}"),
        ("uptime", format_duration(h.uptime_seconds) if h.uptime_seconds else "unknown"),
        ("virtualisation", h.virtualization or ("yes" if h.virtualized else "none")),
        ("CPU", f"{c.logical_count} logical cores, {c.total_percent:.0f}% busy, load {c.load1:.2f} / "
                f"{c.load5:.2f} / {c.load15:.2f}"),
        ("memory", f"{m.percent:.0f}% of {_gib(m.total)} GiB used; swap {m.swap_percent:.0f}% of "
                   f"{_gib(m.swap_total)} GiB"),
        ("clock", f"{s.clock.sync_source or 'unknown source'}, {_sync(s.clock)}"),
    ]
    return f'<section id="host"><h2>Host</h2>{_table(("", ""), rows)}</section>'


def _resources(s: facts_pb2.Snapshot) -> str:
    samples = list(s.timeseries.samples)
    if len(samples) < 2:
        return (
            '<section id="resources"><h2>CPU, memory and I/O</h2>'
            '<p class="empty">No time series in this bundle.</p></section>'
        )
    t = [x.at.ToMicroseconds() / 1e6 for x in samples]
    cpu_series = [
        Series("total", tuple(x.cpu_percent for x in samples), "#3b6ea5"),
        Series("kernel", tuple(x.cpu_system_percent for x in samples), "#b3261e"),
        Series("iowait", tuple(x.cpu_iowait_percent for x in samples), "#a15c00"),
    ]
    if s.timeseries.agent_cpu_known:  # what of the total was this agent collecting
        cpu_series.append(Series("Casefile itself", tuple(x.agent_cpu_percent for x in samples), "#6d6d6d"))
    cpu = line_chart("CPU %", t, cpu_series, unit="%", y_max=100, y_title="% of all CPUs")
    mem = line_chart("Memory and swap %", t, [
        Series("memory", tuple(x.mem_percent for x in samples), "#2e7d32"),
        Series("swap", tuple(x.swap_percent for x in samples), "#7b1fa2"),
    ], unit="%", y_max=100, y_title="% of total")
    io = line_chart("Disk and network bytes/s", t, [
        Series("disk read", tuple(float(x.disk_read_bps) for x in samples), "#3b6ea5"),
        Series("disk write", tuple(float(x.disk_write_bps) for x in samples), "#b3261e"),
        Series("net in", tuple(float(x.net_recv_bps) for x in samples), "#2e7d32"),
        Series("net out", tuple(float(x.net_sent_bps) for x in samples), "#a15c00"),
    ], unit="B/s", y_title="bytes per second")
    return f'<section id="resources"><h2>CPU, memory and I/O</h2>{cpu}{mem}{io}</section>'


def _example(e: LogEvidence | None) -> str:
    return f"{e.source}:{e.line_no if e.line_no is not None else '?'} {e.text}" if e else ""


def _incident(a: Analysis) -> float | None:
    """The log onset on the recorder's clock (the machine's own, before the correction)."""
    onset = a.timeline.onset
    return None if onset is None else onset.began_at - a.timeline.clock_offset_s


def _timeline(a: Analysis) -> str:
    tl = a.timeline
    parts = [f'<section id="timeline"><h2>Timeline</h2><p>{_e(tl.summary)}</p>']
    if tl.buckets:
        onset = tl.onset
        parts.append(stacked_histogram(
            f"Errors and warnings per {format_duration(tl.interval_s)}",
            [b.start for b in tl.buckets],
            [Series("errors", tuple(float(b.errors) for b in tl.buckets), "#b3261e"),
             Series("warnings", tuple(float(b.warnings) for b in tl.buckets), "#e0a030")],
            marker=onset.bucket_index if onset else None,
            marker_label=f"onset {(format_utc(onset.began_at, seconds=False) or '')[11:16]} UTC" if onset else "",
        ))
        parts.append(f'<p class="meta">{tl.records:,} lines from {len(tl.sources)} sources '
                     f"({_e(', '.join(sorted(tl.sources)))}); {tl.untimed:,} without a time; "
                     f"{tl.bad_lines:,} unreadable; clock corrected by {tl.clock_offset_s:+.3f} s.</p>")
        if onset and onset.templates:
            parts.append("<h3>Messages since the onset (first line of each, in time order)</h3>")
            parts.append(_table(("count", "template", "first line"), (
                (g.count, g.template, _example(g.example)) for g in onset.templates), numeric=(0,)))
        if tl.episodes:
            parts.append("<h3>Earlier bursts that ended</h3>")
            parts.append(_table(("start (UTC)", "end (UTC)", "lines"), (
                ((format_utc(e.start, seconds=False) or "").replace("T", " ").rstrip("Z"),
                 (format_utc(e.end, seconds=False) or "").replace("T", " ").rstrip("Z"), e.count)
                for e in tl.episodes[-10:]), numeric=(2,)))
    parts.append("</section>")
    return "".join(parts)


def _disks(s: facts_pb2.Snapshot) -> str:
    rows = [
        (p.mountpoint, p.device, p.fstype, _gib(p.total), p.error or f"{p.percent:.1f}",
         f"{100.0 * p.inodes_used / p.inodes_total:.1f}" if p.inodes_total else "")
        for p in s.disks.partitions
    ]
    table = _table(("mount", "device", "fs", "GiB", "used %", "inodes %"), rows, (3, 4, 5))
    return f'<section id="disks"><h2>Filesystems</h2>{table}</section>'


def _fragmentation(s: facts_pb2.Snapshot) -> str:
    fr = s.fragmentation
    parts = ['<section id="fragmentation"><h2>Fragmentation</h2>']
    if fr.unsupported_reason:
        parts.append(f'<p class="empty">{_e(fr.unsupported_reason)}</p>')
    parts.append(_table(
        ("mount", "fs", "method", "sampled", "% files frag.", "% bytes frag.", "p95 frags", "max"),
        ((f.mountpoint, f.fstype, f.method, f.files_sampled, f"{f.pct_files_fragmented:.1f}",
          f"{f.pct_bytes_in_fragmented:.1f}", f"{f.fragments_p95:.0f}", f.fragments_max) for f in fr.filesystems),
        numeric=(3, 4, 5, 6, 7),
    ))
    for f in fr.filesystems:
        if f.histogram:
            keys = [k for k in _HIST_ORDER if k in f.histogram] + sorted(k for k in f.histogram if k not in _HIST_ORDER)
            parts.append(bar_chart(f"Fragments per file on {f.mountpoint}", [f"{k} frag." for k in keys],
                                   [float(f.histogram[k]) for k in keys]))
    parts.append("</section>")
    return "".join(parts)


def _network(s: facts_pb2.Snapshot) -> str:
    n, d = s.network, s.network_depth
    parts = ['<section id="network"><h2>Network</h2>']
    parts.append(_table(("interface", "up", "addresses", "errors", "drops"), (
        (i.name, "yes" if i.is_up else "no", ", ".join(a.address for a in i.addresses),
         i.counters.errin + i.counters.errout, i.counters.dropin + i.counters.dropout) for i in n.interfaces),
        numeric=(3, 4)))
    facts = []
    if d.resolve.name:
        facts.append(("DNS resolve", f"{d.resolve.name}: {'ok' if d.resolve.ok else 'FAILED ' + d.resolve.error} "
                                     f"in {d.resolve.duration_ms:.0f} ms"))
    if d.dns_servers:
        facts.append(("DNS servers", ", ".join(d.dns_servers)))
    if d.tcp_retrans_known:
        facts.append(("TCP retransmissions", f"{d.tcp_retrans_percent:.2f}%"))
    if d.collector.target:
        state = "ok" if d.collector.ok else "unreachable " + d.collector.error
        facts.append(("collector", f"{d.collector.target}: {state} (connect {d.collector.connect_ms:.0f} ms)"))
    if facts:
        parts.append(_table(("", ""), facts))
    if d.listening:
        parts.append("<h3>Listening ports</h3>")
        parts.append(_table(("proto", "address", "port", "process"),
                            ((p.protocol, p.address, p.port, p.process) for p in d.listening), numeric=(2,)))
    parts.append("</section>")
    return "".join(parts)


def services_unavailable(s: facts_pb2.Snapshot) -> str:
    """Why the bundle cannot say which services failed ("" when it can)."""
    if s.services.unsupported_reason:
        return s.services.unsupported_reason
    for c in s.collectors:
        if c.name == "services" and c.state != facts_pb2.CollectorStatus.OK:
            state = facts_pb2.CollectorStatus.State.Name(c.state).lower()
            return f"the services collector ended {state}" + (f": {c.error}" if c.error else "")
    return ""


def _services_processes(s: facts_pb2.Snapshot) -> str:
    sv, pr = s.services, s.processes
    services = _table(("service", "state", "result", "description"),
                      ((f.name, f"{f.state}/{f.sub_state}", f.result, f.description) for f in sv.failed))
    missing = services_unavailable(s)
    if missing:  # "none" would claim every service runs
        services = f'<p class="empty">not available: {_e(missing)}</p>'
    top = _table(("process", "pid", "CPU %", "RSS MiB", "user"), (
        (f"{p.name} (Casefile, collecting)" if p.agent else p.name, p.pid, f"{p.cpu_percent:.0f}",
         f"{p.rss / 1024**2:.0f}", p.username)
        for p in [*pr.top_cpu[:5], *pr.top_rss[:5]]), numeric=(1, 2, 3))
    return (f'<section id="services"><h2>Failed services</h2>{services}</section>'
            f'<section id="processes"><h2>Top processes</h2>{top}</section>')


def _collectors(s: facts_pb2.Snapshot) -> str:
    rows = ((c.name, facts_pb2.CollectorStatus.State.Name(c.state).lower(), f"{c.duration_ms:.0f}", c.error)
            for c in s.collectors)
    table = _table(("collector", "status", "ms", "detail"), rows, (2,))
    return f'<section id="collectors"><h2>Collection</h2>{table}</section>'


def render_html(a: Analysis) -> str:
    """The whole report as one HTML document (str)."""
    s = a.view.snapshot
    when = format_utc(a.view.collected_at) or "unknown time"
    title = f"Casefile report — {a.view.hostname or 'unknown host'}"
    header = (
        f"<header><h1>{_e(title)}</h1><p class=\"meta\">collected {_e(when)} · bundle {_e(s.bundle_id or '—')} · "
        f"case {_e(s.case_id or '—')} · agent {_e(s.agent_version or '?')}</p></header>"
    )
    trigger = bundle_trigger(s, a.view.manifest.spec if a.view.manifest else None)
    body = "".join((
        header, trigger_section(trigger), _findings(a), _host(s, a), _timeline(a),
        _resources(s), recorded_section(s, _incident(a)), _disks(s), _fragmentation(s), _network(s),
        _services_processes(s), crashes_section(s), _collectors(s),
    ))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>{body}</main></body></html>\n"
    )
