"""Engineer commands of ``casefile-collector`` that read what the collector stores:
``hosts``, ``bundles``, ``show``, ``download``, ``findings``, ``timeline``, ``diff``,
``report``. Each talks to a running collector over gRPC with an engineer token; the
connection options come from ``engineer_command`` (``collector.cli_common``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from agent.errors import CasefileError
from agent.identity_text import display
from collector.cli_common import (
    Connection,
    JsonOpt,
    _fmt_ts,
    _shown_tree,
    app,
    engineer_command,
    err,
    out,
    parse_duration,
    parse_when,
    shown,
)


@engineer_command(app)
def hosts(
    conn: Connection,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size.")] = 100,
    page_token: Annotated[str, typer.Option("--page-token", help="Cursor from the previous page.")] = "",
) -> None:
    """Hosts that have sent bundles, then agents that have sent none yet (connected now?)."""
    from google.protobuf import json_format

    from protos import collector_pb2

    channel, stub, md = conn.open()
    with channel:
        resp = stub.ListHosts(
            collector_pb2.ListHostsRequest(page_size=limit, page_token=page_token), metadata=md, timeout=30
        )
    if as_json:
        print(json_format.MessageToJson(resp, indent=1))
        return
    t = Table("hostname", "os", "bundles", "last seen", "last bundle", "agents")
    for h in resp.hosts:
        t.add_row(
            shown(h.hostname),
            shown(h.os),
            str(h.bundle_count),
            _fmt_ts(h.last_seen),
            shown(h.last_bundle_id),
            shown(", ".join(h.agent_ids)),
        )
    out.print(t)
    if resp.next_page_token:
        out.print(f"more: --page-token {resp.next_page_token}")
    if resp.agents_without_bundles:
        _print_waiting_agents(resp.agents_without_bundles)


def _print_waiting_agents(agents: Any) -> None:
    """Agents set up (enrolled, or made by a case token) that have sent no bundle yet."""
    t = Table("agent", "hostname", "connected", "last seen", "enrolled", "cases", title="Agents without bundles yet")
    for a in agents:
        t.add_row(
            shown(a.agent_id),
            shown(a.hostname),
            "[green]connected now[/]" if a.connected else "no",
            _fmt_ts(a.last_seen) if a.HasField("last_seen") else "never",
            _fmt_ts(a.enrolled_at),
            shown(", ".join(a.case_ids)) or "—",
        )
    out.print(t)


@engineer_command(app)
def bundles(
    conn: Connection,
    as_json: JsonOpt = False,
    host: Annotated[str | None, typer.Option("--host", help="Only this hostname.")] = None,
    case: Annotated[str | None, typer.Option("--case", help="Only this case id.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Created at/after: ISO time or a duration ago (2h, 7d).")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Created before: ISO time or a duration ago.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size (max 1000).")] = 50,
    page_token: Annotated[str, typer.Option("--page-token", help="Cursor from the previous page.")] = "",
) -> None:
    """Bundles, newest first, with filters and cursor pagination."""
    from google.protobuf import json_format

    from protos import collector_pb2

    req = collector_pb2.ListBundlesRequest(
        hostname=host or "", case_id=case or "", page_size=limit, page_token=page_token
    )
    if since:
        req.since.FromDatetime(parse_when(since))
    if until:
        req.until.FromDatetime(parse_when(until))
    channel, stub, md = conn.open()
    with channel:
        resp = stub.ListBundles(req, metadata=md, timeout=30)
    if as_json:
        print(json_format.MessageToJson(resp, indent=1))
        return
    # The id whole, never cut by a narrow terminal: it is what show/download/report take.
    t = Table(Column("bundle id", no_wrap=True, min_width=32), "host", "case", "kind", "created", "size", "collectors")
    for b in resp.bundles:
        t.add_row(
            shown(b.bundle_id),
            shown(b.hostname),
            shown(b.case_id),
            shown(b.kind)
            + (" (carried)" if _carried(b) else "")
            + ("\n[red](signer not enrolled)[/]" if b.agent_id == "ag_signer-not-enrolled" else ""),
            _fmt_ts(b.created_at),
            f"{b.size:,}",
            f"{b.collectors_ok} ok"
            + (f", {b.collectors_skipped} skipped" if b.collectors_skipped else "")
            + (f", [red]{b.collectors_failed} failed[/]" if b.collectors_failed else ""),
        )
    out.print(t)
    if resp.next_page_token:
        out.print(f"more: --page-token {resp.next_page_token}")


def _carried(b: Any) -> bool:
    """The bundle was delivered by another key than the one that signed it."""
    return bool(b.origin_fingerprint) and b.origin_fingerprint != b.key_fingerprint


@engineer_command(app)
def show(
    bundle_id: Annotated[str, typer.Argument(help="Bundle id (32 hex).")],
    conn: Connection,
    as_json: JsonOpt = False,
) -> None:
    """One bundle's summary and key facts (``--json``: every fact); a triggered bundle names
    its trigger, its kind and what fired it (``facts.trigger`` in ``--json``)."""
    from google.protobuf import json_format

    from agent.analysis.report_crashes import bundle_trigger, trigger_line
    from agent.render import print_summary
    from agent.summary import snapshot_summary
    from protos import collector_pb2

    channel, stub, md = conn.open()
    with channel:
        detail = stub.GetBundle(collector_pb2.GetBundleRequest(bundle_id=bundle_id), metadata=md, timeout=30)
    if as_json:
        print(json_format.MessageToJson(detail, indent=1))
        return
    b = detail.summary
    origin = b.origin_fingerprint or b.key_fingerprint
    out.print(
        f"[bold]bundle {shown(b.bundle_id)}[/] from {shown(b.hostname)}, "
        f"case {shown(b.case_id) or '—'}, {shown(b.kind)}, created {_fmt_ts(b.created_at)}, {b.size:,} bytes, "
        f"signed by key {shown(origin)}"
        + (" [red](signer not enrolled)[/]" if b.agent_id == "ag_signer-not-enrolled" else "")
    )
    if _carried(b):
        out.print(f"carried in by agent {shown(b.agent_id)} (key {shown(b.key_fingerprint)}) with a case token")
    else:
        out.print(f"uploaded by agent {shown(b.agent_id)}")
    trigger = bundle_trigger(detail.facts, (_manifest(detail.manifest_json) or {}).get("spec"))
    if trigger is not None:
        out.print(f"[bold]{shown(trigger_line(trigger))}[/]")
    print_summary(out, _shown_tree(snapshot_summary(detail.facts)))


def _manifest(text: str) -> dict[str, Any] | None:
    """The stored manifest (for what older bundles keep only there); None when unreadable."""
    try:
        value = json.loads(text) if text else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@engineer_command(app)
def download(
    bundle_id: Annotated[str, typer.Argument(help="Bundle id (32 hex).")],
    conn: Connection,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File or folder (default: its original name here).")
    ] = None,
) -> None:
    """Download the original bundle file, byte-identical (needs the engineer role)."""
    import hashlib

    from agent.cli_progress import TransferProgress
    from protos import collector_pb2

    channel, stub, md = conn.open()
    with channel:
        stream = stub.DownloadBundle(collector_pb2.GetBundleRequest(bundle_id=bundle_id), metadata=md)
        first = next(stream)
        hdr = first.header
        name = download_name(hdr.file_name, bundle_id)
        dest = output or Path(name)
        if dest.is_dir():
            dest = dest / name
        tmp = dest.with_name(f".{dest.name}.partial")
        h = hashlib.sha256()
        got = 0
        try:
            # 0600, as the agent writes bundles: they hold a customer's data.
            with (
                os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh,
                TransferProgress(err, f"downloading {bundle_id[:12]}…", enabled=err.is_terminal) as bar,
            ):
                for chunk in stream:
                    fh.write(chunk.data)
                    h.update(chunk.data)
                    got += len(chunk.data)
                    bar.update(got, hdr.size)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a cut download leaves nothing half-written behind
            raise
    if h.hexdigest() != hdr.sha256:
        tmp.unlink(missing_ok=True)
        raise CasefileError(f"download of {bundle_id} hashed to {h.hexdigest()}, expected {hdr.sha256}")
    tmp.replace(dest)
    out.print(f"[green]saved[/] {dest} ({hdr.size:,} bytes, sha256 {hdr.sha256})")


def download_name(file_name: str, bundle_id: str) -> str:
    """The file name to save a download under. It comes from the server: only its last
    part, and never empty, ".", "..", hidden or with a NUL (then the bundle id names it)."""
    name = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or name.startswith(".") or "\0" in name:
        return f"{bundle_id}.tar.zst"
    return name


@engineer_command(app, "findings")
def findings_cmd(
    conn: Connection,
    bundle_id: Annotated[str | None, typer.Argument(help="Bundle id (32 hex); none: across bundles.")] = None,
    as_json: JsonOpt = False,
    rule: Annotated[list[str] | None, typer.Option("--rule", help="Finding code (repeatable); across bundles.")] = None,
    severity: Annotated[str, typer.Option("--severity", help="At least: info, warning or critical.")] = "",
    host: Annotated[str, typer.Option("--host", help="Only this host.")] = "",
    case: Annotated[str, typer.Option("--case", help="Only this case.")] = "",
    agent: Annotated[str, typer.Option("--agent", help="Only this agent id.")] = "",
    since: Annotated[str | None, typer.Option("--since", help="Bundles created since (ISO time or 7d).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Bundles created before (ISO time or 2h).")] = None,
    text: Annotated[str, typer.Option("--text", help="Substring of the title or subject.")] = "",
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size.")] = 100,
    page_token: Annotated[str, typer.Option("--page-token", help="Cursor from the previous page.")] = "",
) -> None:
    """A stored bundle's findings (exit 0 none/info, 10 warning, 20 critical); without a
    bundle id, stored findings across bundles, newest first, filtered by the options."""
    from protos import collector_pb2

    if bundle_id is None:
        from collector.cli_fleet import list_findings

        list_findings(
            conn,
            rules=rule or [], severity=severity, host=host, case=case, agent=agent, since=since,
            until=until, text=text, limit=limit, page_token=page_token, as_json=as_json,
        )
        return
    channel, stub, md = conn.open()
    with channel:
        resp = stub.GetFindings(collector_pb2.GetBundleRequest(bundle_id=bundle_id), metadata=md, timeout=120)
    doc = json.loads(resp.json)
    if as_json:
        print(resp.json)
    else:
        t = Table("severity", "finding", "next step", title=f"Findings of {bundle_id}", title_justify="left")
        for f in doc["findings"]:
            t.add_row(shown(f["severity"]), f"{shown(f['title'])}\n[dim]{shown(f['code'])}[/]", shown(f["next_step"]))
        out.print(t if doc["findings"] else "[green]No findings[/]")
    raise typer.Exit(int(doc["exit_code"]))


@engineer_command(app, "timeline")
def timeline_cmd(
    bundle_id: Annotated[str, typer.Argument(help="Bundle id (32 hex).")],
    conn: Connection,
    as_json: JsonOpt = False,
    interval: Annotated[str | None, typer.Option("--interval", help="Bucket size, e.g. 5m (default: auto).")] = None,
) -> None:
    """When did it start: a stored bundle's error/warning timeline and onset."""
    from protos import collector_pb2

    seconds = int(parse_duration(interval).total_seconds()) if interval else 0
    channel, stub, md = conn.open()
    with channel:
        resp = stub.GetTimeline(
            collector_pb2.TimelineRequest(bundle_id=bundle_id, interval_s=seconds), metadata=md, timeout=120
        )
    if as_json:
        print(resp.json)
        return
    doc = json.loads(resp.json)
    out.print(shown(doc["summary"]))
    onset = doc["onset"]
    if onset:
        t = Table("count", "message template", title="Dominant messages of the burst", title_justify="left")
        for g in onset["templates"]:
            t.add_row(str(g["count"]), shown(g["template"]))
        out.print(t)


@engineer_command(app, "diff")
def diff_cmd(
    a: Annotated[str, typer.Argument(help="Older bundle id.")],
    b: Annotated[str, typer.Argument(help="Newer bundle id.")],
    conn: Connection,
    as_json: JsonOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Compare bundles of different hosts.")] = False,
) -> None:
    """What changed between two stored bundles of the same host."""
    from protos import collector_pb2

    channel, stub, md = conn.open()
    with channel:
        resp = stub.DiffBundles(collector_pb2.DiffRequest(a=a, b=b, force=force), metadata=md, timeout=120)
    if as_json:
        print(resp.json)
    else:
        sys.stdout.write("\n".join(display(line) for line in resp.text.split("\n")))


@engineer_command(app, "report")
def report_cmd(
    bundle_id: Annotated[str, typer.Argument(help="Bundle id (32 hex).")],
    conn: Connection,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file (default: <bundle id>.html).")
    ] = None,
) -> None:
    """Render a stored bundle's self-contained HTML report into a file."""
    from protos import collector_pb2

    channel, stub, md = conn.open()
    with channel:
        resp = stub.RenderReport(collector_pb2.GetBundleRequest(bundle_id=bundle_id), metadata=md, timeout=120)
    dest = output or Path(f"{bundle_id}.html")
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.write_bytes(resp.html)
    tmp.replace(dest)
    out.print(f"[green]saved[/] {dest} ({len(resp.html):,} bytes)")
