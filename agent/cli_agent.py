"""``casefile agent enroll|show|run|history``: this machine's agent identity, its
enrollment with a collector, the live-request daemon and what it was asked."""

from __future__ import annotations

import socket
import sys
from typing import Annotated

import typer

from agent.cli_common import (
    CaFileOpt,
    CaFingerprintOpt,
    HomeOpt,
    InsecureOpt,
    agent_app,
    open_collector_channel,
    out,
)
from agent.state import AgentHome, Enrollment
from agent.version import __version__


@agent_app.command("enroll")
def agent_enroll(
    collector: Annotated[str, typer.Option("--collector", help="Collector HOST:PORT.")],
    token: Annotated[str, typer.Option("--token", envvar="CASEFILE_ENROLL_TOKEN", help="Enrollment token.")],
    ca_fingerprint: CaFingerprintOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    home: HomeOpt = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="key=value that selects this agent for hunts (role=web); repeatable."),
    ] = None,
) -> None:
    """Enroll this machine: its key is registered with the collector, the pin remembered.

    Labels are stated at each enroll: enrolling again replaces them."""
    from agent.labels import parse_labels
    from agent.transport import enroll

    try:
        parse_labels(label or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--label") from None
    state = AgentHome(home)
    key = state.key()
    with open_collector_channel(collector, ca_fingerprint, ca_file, insecure) as channel:
        resp = enroll(
            channel,
            token=token,
            key=key,
            hostname=socket.gethostname(),
            agent_version=__version__,
            labels=tuple(label or ()),
        )
    state.save_enrollment(
        Enrollment(
            agent_id=resp.agent_id,
            collector=collector,
            ca_fingerprint=ca_fingerprint,
            key_fingerprint=key.fingerprint,
        )
    )
    out.print(f"[green]Enrolled[/] as agent {resp.agent_id} with key {key.fingerprint}")


@agent_app.command("show")
def agent_show(
    home: HomeOpt = None,
    pem: Annotated[bool, typer.Option("--pem", help="Print only the public key PEM (for openssl).")] = False,
) -> None:
    """This agent's key fingerprint, public key and enrollment."""
    state = AgentHome(home)
    key = state.key()
    if pem:
        sys.stdout.write(key.public.pem().decode("ascii"))
        return
    enrollment = state.enrollment()
    out.print(f"home:        {state.root}")
    out.print(f"key:         {key.fingerprint}")
    out.print(f"agent id:    {enrollment.agent_id if enrollment else '(not enrolled)'}")
    if enrollment:
        out.print(f"collector:   {enrollment.collector} (pinned {enrollment.ca_fingerprint or 'no'})")


@agent_app.command("run")
def agent_run(home: HomeOpt = None) -> None:
    """Serve live snapshot requests from the enrolled collector until SIGTERM/SIGINT."""
    from agent.daemon import run

    run(home)


@agent_app.command("history")
def agent_history(
    home: HomeOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document: the list of entries ([] when none).")
    ] = False,
    metrics: Annotated[
        bool, typer.Option("--metrics", help="What the flight recorder keeps on this machine, not the requests.")
    ] = False,
    since: Annotated[str, typer.Option("--since", help="With --metrics: the window, 30m, 6h (default), 7d.")] = "6h",
) -> None:
    """Every live request this agent received: who, when, scope, reason, outcome, bundle."""
    if metrics:
        from agent.daemon.recorder_show import metrics_document, render
        from agent.units import parse_duration
        from agent.untrusted import terminal_json

        try:
            window_s = parse_duration(since).total_seconds()
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--since") from None
        doc = metrics_document(AgentHome(home).root, window_s)
        if as_json:  # one document, not lines: the summary belongs with its samples
            sys.stdout.write(terminal_json(doc) + "\n")
        else:
            for part in render(doc):
                out.print(part)
        return
    from agent.daemon import History

    entries = History(AgentHome(home).root / "history.jsonl").entries()
    if as_json:
        from agent.untrusted import terminal_json

        # One document, like every other --json: a reader parses the whole output once.
        sys.stdout.write(terminal_json(entries) + "\n")
        return
    if not entries:
        out.print("no live requests yet")
        return
    from rich.table import Table
    from rich.text import Text

    from agent.daemon.history import shown

    # Text cells, not str: rich would read "[...]" in a reason as markup. ``shown`` drops
    # control and bidi characters the collector (or an edit of the file) put there.
    t = Table("when (UTC)", "requested by", "scope", "reason", "outcome", "bundle / detail", title="Live requests")
    for e in entries:
        t.add_row(
            *(
                Text(shown(v))
                for v in (
                    str(e.get("at", ""))[:19].replace("T", " "),
                    e.get("requested_by") or (f"trigger {e['trigger']}" if e.get("trigger") else ""),
                    e.get("scopes") or [],
                    e.get("reason", ""),
                    e.get("outcome", ""),
                    e.get("bundle_id") or e.get("detail") or "",
                )
            )
        )
    out.print(t)
