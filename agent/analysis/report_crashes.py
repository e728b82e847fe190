"""What fired a triggered bundle, and the crash artefacts a bundle holds, for people to read.

Shared by the HTML report (``report_html``), the collector's ``show`` and the console's
bundle page, so the three say the same thing:

- ``bundle_trigger``: the trigger of a ``triggered`` bundle (``Snapshot.trigger``; a
  bundle sealed before that field existed names only the trigger, in its manifest's
  ``spec.options.trigger``), and ``trigger_line`` / ``trigger_section`` to show it;
- ``crashes_section``: systemd-coredump entries (with the core files the owner let go,
  or why each stayed), the kernel's pstore and previous-boot oops/panic lines, and the
  ``/var/crash`` listing; "not collected" when the bundle's scopes did not ask for them.

Everything here comes from an untrusted machine: every text is HTML-escaped (``_e``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.analysis.model import format_utc
from protos import facts_pb2

__all__ = ["CRASH_COLLECTORS", "bundle_trigger", "crashes_section", "trigger_line", "trigger_section"]

CRASH_COLLECTORS = ("coredumps", "kernel_crashes", "crash_files")
_WHEN = {
    "cpu": "CPU busy held above a threshold",
    "iowait": "I/O wait held above a threshold",
    "memory": "memory use held above a threshold",
    "swap": "swap use held above a threshold",
    "disk": "filesystem use held above a threshold",
    "oom_kill": "the kernel's OOM killer ran",
    "kernel_oops": "the kernel oopsed",
    "unit_failed": "a systemd unit failed",
}
_LINES_SHOWN = 50


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def bundle_trigger(s: facts_pb2.Snapshot, spec: object = None) -> facts_pb2.TriggerFacts | None:
    """The trigger that sealed this bundle; None when no trigger did. ``spec``: the
    manifest's ``spec`` (``Manifest.spec``, or the ``spec`` of its JSON), for bundles
    sealed before ``Snapshot.trigger``."""
    if s.HasField("trigger") and s.trigger.name:
        return s.trigger
    options = spec.get("options") if isinstance(spec, Mapping) else None
    name = options.get("trigger") if isinstance(options, Mapping) else None
    if isinstance(name, str) and name:
        return facts_pb2.TriggerFacts(name=name)
    return None


def _fired_at(t: facts_pb2.TriggerFacts) -> str:
    if not t.HasField("fired_at"):
        return ""
    return (format_utc(t.fired_at.ToMicroseconds() / 1e6) or "").replace("T", " ").replace("Z", " UTC")


def trigger_line(t: facts_pb2.TriggerFacts) -> str:
    """One line of plain text: ``triggered by cpu-high (cpu) at 2026-12-07 09:14:03 UTC: CPU busy …``."""
    text = f"triggered by {t.name}"
    if t.when:
        text += f" ({t.when})"
    if at := _fired_at(t):
        text += f" at {at}"
    return text + (f": {t.detail}" if t.detail else "")


def trigger_section(t: facts_pb2.TriggerFacts | None) -> str:
    """The HTML block naming the trigger ("" for a bundle no trigger sealed)."""
    if t is None:
        return ""
    rows = [("trigger", t.name), ("kind", f"{t.when}: {_WHEN.get(t.when, 'unknown kind')}" if t.when else "—"),
            ("what fired it", t.detail or "—"), ("fired at", _fired_at(t) or "—")]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return (
        '<section id="trigger"><h2>Triggered capture</h2><p>The agent sealed this bundle on its own when a '
        f'trigger of its policy fired.</p><div class="scroll"><table><tbody>{body}</tbody></table></div></section>'
    )


def _table(caption: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return ""
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in headers)
    return (f'<div class="scroll"><table><caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _lines(caption: str, lines: Sequence[str]) -> str:
    if not lines:
        return ""
    shown = "\n".join(lines[:_LINES_SHOWN])
    more = f" (the first {_LINES_SHOWN} of {len(lines)})" if len(lines) > _LINES_SHOWN else ""
    return f"<h3>{_e(caption + more)}</h3><pre class=\"log\">{_e(shown)}</pre>"


def _when(ts: Any, has: bool) -> str:
    return (format_utc(ts.ToMicroseconds() / 1e6) or "").replace("T", " ").replace("Z", "") if has else ""


def _size(n: int) -> str:
    return f"{n:,}" if n else ""


def _coredumps(c: facts_pb2.CoredumpFacts) -> str:
    parts = ["<h3>Core dumps (systemd-coredump)</h3>"]
    if c.total > len(c.coredumps):
        parts.append(f"<p>The newest {len(c.coredumps)} of {c.total} entries.</p>")
    parts.append(_table("entries, newest first (metadata only)",
                        ("time (UTC)", "pid", "signal", "executable", "unit", "core", "bytes"),
                        ((_when(d.time, d.HasField("time")), d.pid, d.signal_name or d.signal or "", d.executable,
                          d.unit, d.corefile, _size(d.size)) for d in c.coredumps)))
    for d in c.coredumps:
        if d.command_line or d.stack:
            parts.append(f"<p><strong>{_e(d.executable or d.pid)}</strong> (pid {_e(d.pid)}): "
                         f"<code>{_e(d.command_line)}</code></p>")
            if d.stack:
                parts.append(f'<pre class="log">{_e(chr(10).join(d.stack))}</pre>')
    parts.append(_table("core files the owner allowed (crash_core_files)", ("core file", "bytes", "in the bundle"),
                        ((f.name, _size(f.size), "yes, as cores/" + f.name if f.included else f"no: {f.reason}")
                         for f in c.core_files)))
    if not c.coredumps and not c.core_files:
        parts.append(f'<p class="empty">{_e(c.detail or "none recorded")}</p>')
    elif c.detail:
        parts.append(f'<p class="meta">{_e(c.detail)}</p>')
    return "".join(parts)


def _kernel(k: facts_pb2.KernelCrashFacts) -> str:
    parts = ["<h3>Kernel crashes (pstore, previous boot)</h3>"]
    parts.append(_table("pstore files (written as the kernel died)", ("file", "bytes", "modified (UTC)"),
                        ((f.path, _size(f.size), _when(f.modified, f.HasField("modified"))) for f in k.pstore)))
    parts.append(_lines("oops/panic lines in pstore", list(k.pstore_lines)))
    parts.append(_lines("oops/panic lines of the previous boot (journalctl -b -1 -k)", list(k.previous_boot)))
    if not k.pstore and not k.pstore_lines and not k.previous_boot:
        parts.append(f'<p class="empty">{_e(k.detail or "no kernel crash recorded")}</p>')
    elif k.detail:
        parts.append(f'<p class="meta">{_e(k.detail)}</p>')
    return "".join(parts)


def _crash_dir(f: facts_pb2.CrashFileFacts) -> str:
    where = f.directory or "/var/crash"
    parts = [f"<h3>Crash reports in {_e(where)}</h3>"]
    if f.total > len(f.files):
        parts.append(f"<p>The newest {len(f.files)} of {f.total} files.</p>")
    parts.append(_table("files, newest first", ("file", "bytes", "modified (UTC)"),
                        ((x.path, _size(x.size), _when(x.modified, x.HasField("modified"))) for x in f.files)))
    if not f.files:
        parts.append(f'<p class="empty">{_e(f.detail or "none")}</p>')
    elif f.detail:
        parts.append(f'<p class="meta">{_e(f.detail)}</p>')
    return "".join(parts)


def crashes_section(s: facts_pb2.Snapshot) -> str:
    """The crash artefacts as one HTML section; says so when the bundle did not collect them."""
    head = '<section id="crashes"><h2>Crash artefacts</h2>'
    ran = {c.name: c for c in s.collectors if c.name in CRASH_COLLECTORS}
    if not ran:
        return (f'{head}<p class="empty">Not collected in this bundle (the <code>crashes</code> scope was not '
                "asked for).</p></section>")
    parts = [head]
    for name in CRASH_COLLECTORS:
        status = ran.get(name)
        if status is None:
            continue
        if name == "coredumps":
            parts.append(_coredumps(s.coredumps))
        elif name == "kernel_crashes":
            parts.append(_kernel(s.kernel_crashes))
        else:
            parts.append(_crash_dir(s.crash_files))
        if status.state != facts_pb2.CollectorStatus.OK:
            state = facts_pb2.CollectorStatus.State.Name(status.state).lower()
            parts.append(f'<p class="meta">collector {_e(name)} ended {_e(state)}'
                         f"{': ' + _e(status.error) if status.error else ''}</p>")
    parts.append("</section>")
    return "".join(parts)
