"""``casefile``: the customer's and technician's command line (a thin shell over the core).

Exit codes (stable, for scripts):
  0  success
  1  verification failed (the bundle is not what it claims to be)
  2  usage error
  3  the collector could not be reached or refused the request
  4  any other Casefile error (key store, bundle writing, collection framework)
  5  the file is a sealed (age-encrypted) bundle: only its recipient opens and verifies it
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from agent.cli_common import (
    CaFileOpt,
    CaFingerprintOpt,
    HomeOpt,
    InsecureOpt,
    app,
    err,
    open_collector_channel,
    out,
    upload_to_collector,
)
from agent.collect.logparse.bounds import DEFAULT_MAX_BYTES, DEFAULT_MAX_BYTES_PER_SOURCE
from agent.collect_request import send_later_command
from agent.console import load_console
from agent.errors import CasefileError, CollectionError, SealedBundleError, TransportError, VerificationError
from agent.state import AgentHome
from agent.version import __version__

__all__ = ["app", "main"]


@app.command()
def collect(
    case: Annotated[str | None, typer.Option("--case", help="Support case id, e.g. SR-1234.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the bundle.")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Only these collectors (repeat it, or a,b), or only artifacts matching this path glob (has / * ?).",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude", help="Skip these collectors (repeat it, or a,b), or artifacts matching this path glob."
        ),
    ] = None,
    upload: Annotated[str | None, typer.Option("--upload", help="Also send it to this collector HOST:PORT.")] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="Case token from support.", envvar="CASEFILE_TOKEN")
    ] = None,
    profile: Annotated[
        str, typer.Option("--profile", help="Redaction: standard (secrets), private (+identifiers), facts-only.")
    ] = "standard",
    preview: Annotated[
        bool, typer.Option("--preview", help="Show what would go into the bundle; write and send nothing.")
    ] = False,
    add_file: Annotated[
        list[Path] | None, typer.Option("--add-file", help="Attach this file (redacted) as files/<name>.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Upload without asking for confirmation.")] = False,
    allow_leaks: Annotated[
        bool, typer.Option("--allow-leaks", help="Seal even if the leak gate finds something (recorded).")
    ] = False,
    since: Annotated[str, typer.Option("--since", help="Log window: 30m, 2h, 24h (default), 7d.")] = "24h",
    logs_max: Annotated[
        str,
        typer.Option(
            "--logs-max",
            help=f"Total log bytes kept, newest first (per source {DEFAULT_MAX_BYTES_PER_SOURCE >> 20}M; "
            "`--set logs_max_bytes_per_source=` changes that).",
        ),
    ] = f"{DEFAULT_MAX_BYTES >> 20}M",
    set_options: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Collector option KEY=VALUE, e.g. frag_budget_s=10 or processes_top_n=40 "
            "(`casefile options` lists them).",
        ),
    ] = None,
    budgets: Annotated[
        list[str] | None,
        typer.Option("--budget", help="A collector's time budget NAME=SECONDS, e.g. fragmentation=60."),
    ] = None,
    spec_arg: Annotated[
        str | None,
        typer.Option("--spec", help="Also run a collection spec: a signed spec file or postgresql, rabbitmq, systemd."),
    ] = None,
    encrypt_to: Annotated[
        str | None, typer.Option("--encrypt-to", help="Seal the bundle (age) for this recipient age1… from support.")
    ] = None,
    ca_fingerprint: CaFingerprintOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    home: HomeOpt = None,
) -> None:
    """Collect diagnostics on this machine into one signed bundle; optionally upload it.

    Before an upload from a terminal the preview summary is shown and you are asked to
    confirm (--yes skips that). Without a terminal (a script, a service) --upload on the
    command line is the instruction itself, as `sos report --batch --upload` is: it is
    sent, and the receipt records "non-interactive".
    """
    from agent.collect import start_collection
    from agent.collect_request import SENDING, RequestError, check_collect_request, decide_consent

    state = AgentHome(home)
    enrollment = state.enrollment()
    try:
        request = check_collect_request(
            case=case, only=only, exclude=exclude, since=since, logs_max=logs_max, set_options=set_options,
            budgets=budgets, add_files=add_file, upload=upload, token=token, enrollment=enrollment,
            preview=preview, home=state.root,
        )  # fmt: skip
    except RequestError as exc:
        raise typer.BadParameter(str(exc), param_hint=exc.hint) from None
    from agent.sealed import check_recipient, seal_bundle

    try:
        if encrypt_to:
            check_recipient(encrypt_to)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--encrypt-to") from None
    wants_upload = request.wants_upload
    measured: dict[str, str | int | float | bool] = {}
    if wants_upload and request.collector:
        # Reachability and clock offset to the collector belong in the facts of this run.
        measured["collector_target"] = request.collector
        offset = _collector_offset(state, request.collector, ca_fingerprint, ca_file, insecure)
        if offset is not None:
            measured["collector_offset_ms"] = round(offset, 1)
    # Collecting starts now; the rest of the command (redaction, the bundle writer, the
    # key) is loaded while the collectors wait through their sampling windows.
    spec = request.spec(measured)
    spec_run = None
    if spec_arg is None and any(key.startswith("spec.") for key in request.asked):
        raise typer.BadParameter("spec.<param> sets a collection spec's parameter: pass --spec too", param_hint="--set")
    if spec_arg is not None:  # shows what the spec reads and runs, before it does
        from agent.cli_spec import prepare_spec

        spec_run = prepare_spec(spec_arg, state.root, spec, preview=preview, as_json=as_json, yes=yes)
        spec = spec_run.spec
    try:
        running = start_collection(spec, extra=spec_run.extra if spec_run else ())
    except CollectionError as exc:  # the spec names a collector or sets an option badly
        raise typer.BadParameter(str(exc)) from None
    try:
        from agent.oneshot import Consent, PrivacyOptions, prepare_collection
        from agent.redact import PROFILES
        from agent.summary import snapshot_summary

        # Checked here, not before the collectors start: the redaction package loads while they sample.
        if profile not in PROFILES:
            raise typer.BadParameter(f"unknown {profile!r}; known: {', '.join(PROFILES)}", param_hint="--profile")

        privacy = PrivacyOptions(
            profile=profile,
            home=state.root,
            only_paths=request.only_paths,
            exclude_paths=request.exclude_paths,
            add_files=tuple(add_file or ()),
            allow_leaks=allow_leaks,
        )
        key = None if preview else state.key()
        if not as_json:
            # The summary's tables and rich itself (~30 ms), loaded while the collectors sample.
            import agent.render  # noqa: F401

            load_console(out)
            # A deep scan takes minutes: say how far it is (a terminal only; a default run is
            # over before anything would show).
            from agent.cli_progress import wait_with_progress

            wait_with_progress(running, err, enabled=err.is_terminal)
    except BaseException:
        running.abandon()
        raise
    with prepare_collection(
        key=key,
        agent_id=enrollment.agent_id if enrollment else "",
        case_id=case,
        running=running,
        privacy=privacy,
        preview=preview,
    ) as prepared:
        if preview:
            if as_json:
                shown = prepared.preview.to_dict()
                if spec_run is not None:  # what the spec would read and run; none of it ran
                    shown["spec"] = spec_run.plan
                print(json.dumps(shown, indent=1))
            else:
                _render_preview(prepared.preview.to_dict())
            return

        def ask() -> bool:
            _render_preview(prepared.preview.to_dict())
            return typer.confirm(f"Send this bundle to {request.collector or ''}?")

        confirmed, displayed = decide_consent(
            wants_upload=wants_upload, yes=yes, interactive=sys.stdin.isatty() and sys.stdout.isatty(), ask=ask
        )
        consent = Consent(
            confirmed=confirmed,
            displayed=displayed,
            upload_requested=wants_upload,
            only=tuple(only or ()),
            exclude=tuple(exclude or ()),
        )
        done = prepared.seal(output, state.key(), consent)
    done = seal_bundle(done, encrypt_to) if encrypt_to else done  # the signed bundle, encrypted whole
    for unread in sorted(set(done.result.unread_options) & request.asked):
        err.print(
            f"warning: --set {unread}: no collector of this run reads it (misspelt, or its collector did not run;"
            " `casefile options` lists them)",
            highlight=False,
            markup=False,
        )
    b = done.bundle
    summary = snapshot_summary(done.result.snapshot)
    summary["casefile_version"] = __version__
    summary["bundle"] = {
        "path": str(b.path),
        "bundle_id": b.bundle_id,
        "size": b.size,
        "sha256": b.sha256,
        "key_fingerprint": b.fingerprint,
        "case_id": case,
        "collect_seconds": round(done.result.duration_s, 2),
        "profile": profile,
        "redaction_hits": dict(done.redaction.get("totals", {})),
    }
    send_later = functools.partial(
        send_later_command, b.path, upload=upload, ca_fingerprint=ca_fingerprint, ca_file=ca_file,
        insecure=insecure, home=state.root if home else None, token=token,
    )  # fmt: skip
    if wants_upload and confirmed in SENDING:
        try:
            receipt = upload_to_collector(
                b.path, b.bundle_id, state, upload, token, ca_fingerprint, ca_file, insecure,
                key=state.key(), show_progress=not as_json,
            )  # fmt: skip
        except TransportError as exc:
            # The bundle is written: say where it is and how to send it once the collector answers.
            later = send_later()
            if as_json:
                summary["upload"] = {"collector": request.collector or "", "error": str(exc), "send_later": later}
                print(json.dumps(summary, indent=1))
            else:
                _render_summary(summary)
                err.print(f"Not sent: {exc}", soft_wrap=True, highlight=False, markup=False)
                err.print(f"The bundle stays at {b.path}; send it later with: {later}",
                          soft_wrap=True, highlight=False, markup=False)  # fmt: skip
            raise typer.Exit(3) from None
        summary["upload"] = {
            "collector": request.collector or "",
            "agent_id": receipt.agent_id,
            "received_at": receipt.received_at.ToJsonString(),
            "sha256": receipt.sha256,
        }
    if as_json:
        print(json.dumps(summary, indent=1))
    else:
        _render_summary(summary)
    if confirmed == "declined":
        # One line to copy: not wrapped, not coloured, and a "[" in a path is not markup.
        err.print(
            f"Not sent. The bundle stays at {b.path}; send it later with: {send_later()}",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )


def _collector_offset(
    home: AgentHome, address: str, ca_fingerprint: str | None, ca_file: Path | None, insecure: bool
) -> float | None:
    """Collector clock minus ours (ms); None when it cannot be read (the upload will say why)."""
    from agent.transport import measure_clock_offset

    try:
        with open_collector_channel(address, ca_fingerprint, ca_file, insecure, home) as channel:
            return measure_clock_offset(channel)
    except CasefileError:
        return None


def _render_preview(p: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table("member", "kind", "bytes", "redactions", title=f"Would be sent (profile {p['profile']})",
                  title_justify="left")
    for m in p["members"]:
        hits = ", ".join(f"{rule} {n}" for rule, n in m["hits"].items()) or "-"
        table.add_row(Text(m["path"]), m["kind"], f"{m['size']:,}", hits)  # a path is not markup
    out.print(table)
    for d in p["dropped"]:
        out.print(f"[dim]left out[/] {escape(d['path'])}: {escape(d['reason'])}")
    gate = p["leak_gate"]
    if gate["leaks"]:
        for leak in gate["leaks"]:
            artifact = escape(str(leak["artifact"]))
            out.print(f"[red]leak gate[/]: {artifact} still matches {leak['rule']} ({leak['count']}x)")
    else:
        out.print("[green]leak gate passes[/]: no secret pattern (and, if private, no host value) remains")
    out.print(f"preview digest sha256:{p['preview_digest']}")


def _render_summary(s: dict[str, Any]) -> None:
    from agent.render import print_summary

    print_summary(out, s)
    b = s["bundle"]
    out.print(f"Bundle: [bold]{b['path']}[/] ({b['size']:,} bytes, collected in {b['collect_seconds']} s)")
    out.print(f"Signed by key {b['key_fingerprint']}")
    if "upload" in s:
        u = s["upload"]
        out.print(f"[green]Uploaded[/] to {u['collector']} at {u['received_at']} (agent {u['agent_id']})")


# ``unmask``, ``verify``, ``upload``, ``options`` and the ``agent`` commands register themselves on
# ``app`` when imported, after ``collect``: the order ``--help`` lists them in.
import agent.cli_agent  # noqa: E402
import agent.cli_bundle  # noqa: E402
import agent.cli_options  # noqa: E402, F401


def _exit(code: int, message: str) -> NoReturn:
    from rich.markup import escape

    err.print(f"[red]casefile:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def main() -> None:
    # grpc core's own log lines (a TLS handshake failure, a reconnect) would bury the one
    # line this CLI prints about what went wrong; an operator can still ask for them.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        app()
    except VerificationError as exc:
        _exit(1, f"verification failed: {exc}")
    except SealedBundleError as exc:
        _exit(5, str(exc))
    except TransportError as exc:
        _exit(3, str(exc))
    except CasefileError as exc:
        _exit(4, str(exc))
    except OSError as exc:
        _exit(4, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    finally:
        # The command is done and has closed what it wrote; what is left is the
        # interpreter's teardown, whose garbage collections walk every object the run
        # loaded: ~30-40 ms of a one-shot collect's exit, measured. Frozen objects are
        # not walked. Teardown itself (atexit, flushing stdout/stderr) runs as usual.
        gc.freeze()


if __name__ == "__main__":
    main()
