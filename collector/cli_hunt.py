"""``casefile-collector hunt create|status|results``: one request for many agents.

``create`` selects enrolled agents by label and/or host glob and asks each for a bundle
(each agent's policy decides; offline ones get it when they reconnect, until
``--expires``). ``status`` shows each host's state; ``results`` lists the bundles and
the hosts that stand out (see ``collector.hunt_compare``). ``--json`` prints one
document on each.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from collector.cli_common import (
    Connection,
    JsonOpt,
    _fmt_ts,
    engineer_command,
    out,
    parse_duration,
    shown,
)

__all__ = ["hunt_app"]

hunt_app = typer.Typer(
    help="Hunts: one live request for every agent a label or host pattern selects (engineer role).",
    no_args_is_help=True,
)

_ORDER = ("done", "collecting", "uploading", "delivered", "queued", "offline", "denied", "failed", "expired")


def _stub(conn: Connection) -> Any:
    from protos import collector_pb2_grpc

    channel, _, md = conn.open()
    return channel, collector_pb2_grpc.HuntStub(channel), md


def _in_words(status: Any) -> None:
    """Each host's state as its word (``live_state`` read, or an earlier collector's string),
    so the lines and the ``--json`` document are what they were before the enum."""
    from agent.transport.live_states import in_words

    for host in status.hosts:
        in_words(host)


def _status_doc(status: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    _in_words(status)
    doc: dict[str, Any] = json_format.MessageToDict(
        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for host in doc.get("hosts", []):
        del host["live_state"]  # printed even when cleared (every field is): the document stays as it was
    return doc


def _print_status(status: Any) -> None:
    _in_words(status)
    counts = ", ".join(f"{status.counts[s]} {s}" for s in _ORDER if status.counts.get(s))
    out.print(
        f"hunt {shown(status.hunt_id)} case {shown(status.case_id)} · {shown(status.selector)} · "
        f"scopes {','.join(shown(s) for s in status.scopes)} · by {shown(status.created_by)} · "
        f"expires {_fmt_ts(status.expires_at)}",
        highlight=False,
    )
    out.print(f"{len(status.hosts)} hosts: {counts}", highlight=False)
    for h in status.hosts:
        extra = f" bundle {shown(h.bundle_id)}" if h.bundle_id else ""
        out.print(
            f"  {shown(h.hostname):24} {shown(h.agent_id):20} {shown(h.state):11} {shown(h.detail)}{extra}",
            highlight=False,
        )


@engineer_command(hunt_app, "create")
def hunt_create(
    conn: Connection,
    case: Annotated[str, typer.Option("--case", help="The case this hunt serves, e.g. SR-1234.")],
    label: Annotated[
        list[str] | None, typer.Option("--label", help="key=value every selected agent carries; repeatable.")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Glob on the enrolled host name, e.g. 'web-*'.")] = None,
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="facts (default), logs, fragmentation, commands; repeatable.")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="Logs window, e.g. 1h (each policy caps it).")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded on each agent and in the audit log.")] = "",
    expires: Annotated[
        str, typer.Option("--expires", help="How long offline agents may still pick it up (at most 7d).")
    ] = "24h",
    as_json: JsonOpt = False,
) -> None:
    """Ask every selected agent for a bundle; print the hunt id and each host's state."""
    from protos import collector_pb2

    spec = collector_pb2.HuntSpec(
        labels=label or [],
        host_pattern=host or "",
        case_id=case,
        scopes=scope or [],
        reason=reason,
        expires_s=int(parse_duration(expires).total_seconds()),
        since_seconds=int(parse_duration(since).total_seconds()) if since else 0,
    )
    channel, stub, md = _stub(conn)
    with channel:
        status = stub.CreateHunt(spec, metadata=md, timeout=120)
    if as_json:
        print(json.dumps(_status_doc(status), indent=1))
        return
    _print_status(status)
    out.print(f"follow with: casefile-collector hunt status {shown(status.hunt_id)}", highlight=False)


@engineer_command(hunt_app, "status")
def hunt_status_cmd(
    hunt_id: Annotated[str, typer.Argument(help="The hunt id (hu_…) that `hunt create` printed.")],
    conn: Connection,
    as_json: JsonOpt = False,
) -> None:
    """Each host's state: queued, offline, delivered, collecting, uploading, done, denied, failed, expired."""
    from protos import collector_pb2

    channel, stub, md = _stub(conn)
    with channel:
        status = stub.GetHuntStatus(collector_pb2.HuntRef(hunt_id=hunt_id), metadata=md, timeout=60)
    if as_json:
        print(json.dumps(_status_doc(status), indent=1))
        return
    _print_status(status)


@engineer_command(hunt_app, "results")
def hunt_results_cmd(
    hunt_id: Annotated[str, typer.Argument(help="The hunt id (hu_…).")],
    conn: Connection,
    as_json: JsonOpt = False,
) -> None:
    """The hunt's bundles compared: hosts standing out per metric, findings only some hosts have."""
    from protos import collector_pb2

    channel, stub, md = _stub(conn)
    with channel:
        res = stub.GetHuntResults(collector_pb2.HuntRef(hunt_id=hunt_id), metadata=md, timeout=300)
    doc = json.loads(res.json)
    if as_json:
        print(json.dumps({"status": _status_doc(res.status), **doc}, indent=1))
        return
    _print_status(res.status)
    out.print(f"\n{len(doc['bundles'])} bundles compared", highlight=False)
    for m in doc["metrics"]:
        med = "—" if m["median"] is None else f"{m['median']:.2f}{m['unit']}"
        odd = ", ".join(f"{shown(o['host'])} {o['value']:.2f}{m['unit']} (z {o['z']})" for o in m["outliers"])
        out.print(
            f"  {m['metric']:24} median {med:>9} over {m['hosts']} hosts; stand out: {odd or 'none'}", highlight=False
        )
    if doc["uneven_findings"]:
        out.print("findings on some hosts only:", highlight=False)
    for f in doc["uneven_findings"]:
        out.print(
            f"  {shown(f['severity']):8} {shown(f['title'])} [{shown(f['key'])}] on {', '.join(map(shown, f['hosts']))}"
            f"; not on {', '.join(map(shown, f['absent_on']))}",
            highlight=False,
        )
