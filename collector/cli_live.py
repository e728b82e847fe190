"""Engineer commands of ``casefile-collector`` that act or look back: ``snapshot`` (a live
request to a connected agent, exit 5 when its policy denies it) and ``audit`` (admin)."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from agent.errors import CasefileError, TransportError
from collector.cli_common import (
    Connection,
    JsonOpt,
    _fmt_ts,
    app,
    engineer_command,
    out,
    parse_duration,
    shown,
)
from collector.cli_engineer import findings_cmd, show

# ------------------------------------------------------------------ live snapshots and audit


@engineer_command(app, "snapshot")
def snapshot_cmd(
    host: Annotated[str, typer.Argument(help="Hostname or agent id (ag_…) of a connected agent.")],
    conn: Connection,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="facts (default), logs, fragmentation, crashes, plugin:NAME (a plugin collector); repeatable.",
        ),
    ] = None,
    spec_name: Annotated[
        str | None, typer.Option("--spec", help="Also run this stored collection spec: NAME or NAME@VERSION.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Logs window, e.g. 1h (the agent's policy caps it).")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded on the agent and in the audit log.")] = "",
    wait: Annotated[int, typer.Option("--wait", help="Seconds to queue the request if the agent is offline.")] = 0,
    timeout: Annotated[int, typer.Option("--timeout", help="Seconds to wait for the result once delivered.")] = 60,
    as_json: JsonOpt = False,
) -> None:
    """Ask a connected agent for a fresh bundle; show its progress, then its summary and findings.

    Exit 0 when the bundle arrived, 5 when the agent's policy denied the request, 3 when it
    ended otherwise (offline, expired, failed)."""
    from google.protobuf import json_format

    from agent.transport.live_states import in_words
    from protos import collector_pb2

    since_s = int(parse_duration(since).total_seconds()) if since else 0
    spec = collector_pb2.SnapshotRequestSpec(
        host=host, scopes=scope or [], since_seconds=since_s, reason=reason, wait_s=wait, timeout_s=timeout,
        spec=spec_name or "",
    )
    channel, stub, md = conn.open()
    last = None
    events: list[dict[str, Any]] = []
    with channel:
        for event in stub.RequestSnapshot(spec, metadata=md, timeout=wait + timeout + 30):
            in_words(event)  # state: the word, from live_state or an earlier collector's string
            last = event
            if as_json:
                events.append(json_format.MessageToDict(event, preserving_proto_field_name=True))
                continue
            extra = f" bundle {shown(event.bundle_id)}" if event.bundle_id else ""
            when = _fmt_ts(event.at) if event.HasField("at") else ""
            out.print(f"{when:20} {shown(event.state):11} {shown(event.detail)}{extra}", highlight=False)
        doc: dict[str, Any] = {"host": host, "state": last.state if last else "no answer", "events": events}
        if as_json and last is not None and last.state == "done":
            doc["bundle_id"] = last.bundle_id
            found = stub.GetFindings(
                collector_pb2.GetBundleRequest(bundle_id=last.bundle_id), metadata=md, timeout=120
            )
            doc["findings"] = json.loads(found.json)
    if as_json:
        print(json.dumps(doc, indent=1))
    if last is None or last.state != "done":
        message = f"snapshot of {host} ended {doc['state']}: {last.detail if last else ''}".rstrip(": ")
        if last is not None and last.state == "denied":
            raise PolicyDenied(message)
        raise TransportError(message)
    if as_json:
        return
    show(bundle_id=last.bundle_id, conn=conn, as_json=False)
    # findings' own exit code (10/20 by severity) is for that command; a snapshot that
    # arrived is a success.
    with contextlib.suppress(typer.Exit):
        findings_cmd(conn=conn, bundle_id=last.bundle_id)


@engineer_command(app, "audit")
def audit_cmd(
    conn: Connection,
    actor: Annotated[
        str | None,
        typer.Option("--actor", help="Token id, its label (alice), operator, or an agent id for channel events."),
    ] = None,
    action: Annotated[
        str | None,
        typer.Option("--action", help="An action or a part of it: live.snapshot, live, snapshot, channel.connect."),
    ] = None,
    outcome: Annotated[str | None, typer.Option("--outcome", help="ok, denied or a status (not_found…).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Newest entries to show.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """The collector's audit log, newest first (needs the admin role)."""
    from google.protobuf import json_format

    from protos import collector_pb2

    req = collector_pb2.ListAuditRequest(actor=actor or "", action=action or "", outcome=outcome or "", limit=limit)
    channel, stub, md = conn.open()
    with channel:
        resp = stub.ListAudit(req, metadata=md, timeout=30)
    if as_json:  # one JSON document, `[]` when nothing matches
        entries = [json_format.MessageToDict(e, preserving_proto_field_name=True) for e in resp.entries]
        print(json.dumps(entries, indent=1, sort_keys=True))
        return
    cols = ("id", "when", "actor", "role", "action", "target", "outcome", "detail")
    t = Table(*cols, title="Audit", title_justify="left")
    for e in resp.entries:
        who = f"{e.actor_label} ({e.actor})" if e.actor_label else e.actor
        fields = (who, e.role, e.action, e.target, e.outcome, e.detail)
        t.add_row(str(e.id), _fmt_ts(e.at), *(shown(f) for f in fields))
    out.print(t)


class PolicyDenied(CasefileError):
    """The agent's own policy refused a live request (exit 5)."""
