"""``casefile``: the customer's and technician's command line (a thin shell over the core).

Exit codes (stable, for scripts):
  0  success
  1  verification failed (the bundle is not what it claims to be)
  2  usage error
  3  the collector could not be reached or refused the request
  4  any other Casefile error (key store, bundle writing, collection framework)
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from agent.cli_analysis import register as register_analysis_commands
from agent.cli_version import add_version_option
from agent.console import lazy_console, load_console
from agent.errors import CasefileError, CollectionError, TransportError, VerificationError
from agent.state import AgentHome, Enrollment, host_of
from agent.version import __version__

if TYPE_CHECKING:
    from agent.keys import SigningKey

app = typer.Typer(
    name="casefile",
    help="Collect, seal, verify and send diagnostics for a support case.",
    no_args_is_help=True,
    add_completion=False,
)
register_analysis_commands(app)

add_version_option(app, "casefile")

agent_app = typer.Typer(help="The agent's identity and enrollment with a collector.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")

out = lazy_console()
err = lazy_console(stderr=True)

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Agent state folder (key, enrollment). Default: $CASEFILE_HOME or per-user."),
]
CaFingerprintOpt = Annotated[
    str | None,
    typer.Option("--ca-fingerprint", help="Pin the collector's certificate: sha256:<hex> it printed at start."),
]
CaFileOpt = Annotated[Path | None, typer.Option("--ca-file", help="Trust this CA/certificate PEM instead of pinning.")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Plaintext gRPC (loopback collectors only).")]


def _channel(
    address: str,
    ca_fingerprint: str | None,
    ca_file: Path | None,
    insecure: bool,
    home: AgentHome | None = None,
) -> Any:
    """A channel to ``address``; with no trust given, the pin stored at enrollment for it."""
    from agent.transport import open_channel, parse_address

    if home is not None and ca_fingerprint is None and ca_file is None:
        enrollment = home.enrollment()
        if enrollment is not None and enrollment.collector == address:
            ca_fingerprint = enrollment.ca_fingerprint
    return open_channel(
        parse_address(address),
        ca_fingerprint=ca_fingerprint,
        ca_pem=ca_file.read_bytes() if ca_file else None,
        insecure=insecure,
    )


def _upload(
    path: Path,
    bundle_id: str,
    home: AgentHome,
    address: str | None,
    token: str | None,
    ca_fingerprint: str | None,
    ca_file: Path | None,
    insecure: bool,
    *,
    key: SigningKey,
    show_progress: bool = False,
) -> Any:
    """Send ``path``; ``key`` proves who sends it (the home's key, or a courier's)."""
    from agent.transport import UploadTarget, upload_bundle

    enrollment = home.enrollment()
    if address is None and enrollment is not None:
        address = enrollment.collector
    if address is None:
        raise typer.BadParameter("no collector: pass --upload HOST:PORT (or enroll this agent first)")
    if token:
        target = UploadTarget(key=key, case_token=token)
    elif enrollment is not None:
        target = UploadTarget(key=key, agent_id=enrollment.agent_id)
    else:
        raise typer.BadParameter("uploading needs --token (a case token from support) or an enrolled agent")
    from agent.cli_progress import TransferProgress

    # On a terminal only: a script or --json reads the same bytes as before.
    with (
        _channel(address, ca_fingerprint, ca_file, insecure, home) as channel,
        TransferProgress(err, f"uploading to {address}", enabled=show_progress and err.is_terminal) as bar,
    ):
        return upload_bundle(channel, path, bundle_id=bundle_id, target=target, progress=bar.update)


def _key_values(items: Iterable[str], flag: str, *, number: bool = False) -> dict[str, str | int | float | bool]:
    """KEY=VALUE pairs from the command line; values become bool, int or float where they read as one."""
    out: dict[str, str | int | float | bool] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        value: str | int | float | bool = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    continue
        if number and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{flag} {item!r}: {raw!r} is not a number of seconds")
        out[key] = value
    return out


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
        str, typer.Option("--logs-max", help="Total log bytes kept, newest first (default 32M; per source 8M).")
    ] = "32M",
    set_options: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Collector option KEY=VALUE, e.g. frag_budget_s=10 or processes_top_n=40 (README lists them).",
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
    from agent.collect import CollectionSpec, start_collection
    from agent.collect.framework import DEFAULT_TOTAL_BUDGET_S

    if case is not None and not case.isprintable():
        raise typer.BadParameter(f"--case {case!r} holds a control character")
    state = AgentHome(home)
    enrollment = state.enrollment()
    col_only, glob_only = _split_selectors(only)
    col_exclude, glob_exclude = _split_selectors(exclude)
    from agent.units import parse_duration, parse_size

    try:
        options: dict[str, str | int | float | bool] = {
            "logs_since_s": parse_duration(since).total_seconds(),
            "logs_max_bytes": parse_size(logs_max),
            "recorder_home": str(state.root),  # the flight recorder's history, when this machine has one
            "recorder_since_s": parse_duration(since).total_seconds(),
        }
        asked = _key_values(set_options or (), "--set")
        options.update(asked)
        budget_s = {name: float(v) for name, v in _key_values(budgets or (), "--budget", number=True).items()}
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    wants_upload = not preview and (upload is not None or bool(token and enrollment))
    # The command line is checked whole before any collecting: a mistake costs seconds, not a run.
    if token and upload is None and enrollment is None and not preview:
        raise typer.BadParameter("--token is the key to an upload: pass --upload HOST:PORT as well")
    if upload is not None and not token and enrollment is None and not preview:
        raise typer.BadParameter("--upload needs --token (a case token from support) or an enrolled agent")
    from agent.attachments import AttachmentError, check_attachment

    for attached in add_file or ():
        try:
            check_attachment(attached)
        except AttachmentError as exc:
            raise typer.BadParameter(str(exc)) from None
    target = upload or (enrollment.collector if enrollment else None)
    if target and host_of(target):
        # The DNS resolve test asks for the name this agent has to reach.
        options.setdefault("resolve_name", host_of(target))
    if wants_upload and target:
        # Reachability and clock offset to the collector belong in the facts of this run.
        options["collector_target"] = target
        offset = _collector_offset(state, target, ca_fingerprint, ca_file, insecure)
        if offset is not None:
            options["collector_offset_ms"] = round(offset, 1)
    try:
        # A budget asked for on the command line may outlast the run's default total.
        total = max([DEFAULT_TOTAL_BUDGET_S, *budget_s.values()])
        spec = CollectionSpec(
            only=col_only, exclude=col_exclude, options=options, budgets=budget_s, total_budget_s=total
        )
    except CollectionError as exc:
        raise typer.BadParameter(str(exc)) from None
    collectors = None
    if spec_arg is not None:  # shows what the spec reads and runs, before it does
        from agent.cli_spec import prepare_spec

        collectors, spec = prepare_spec(spec_arg, state.root, spec, preview=preview, as_json=as_json, yes=yes)
    # Collecting starts now; the rest of the command (redaction, the bundle writer, the
    # key) is loaded while the collectors wait through their sampling windows.
    try:
        running = start_collection(spec, collectors=collectors)
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
            only_paths=glob_only,
            exclude_paths=glob_exclude,
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
                print(json.dumps(prepared.preview.to_dict(), indent=1))
            else:
                _render_preview(prepared.preview.to_dict())
            return
        confirmed, displayed = "not-asked", False
        if wants_upload:
            if yes:
                confirmed = "yes-flag"
            elif sys.stdin.isatty() and sys.stdout.isatty():
                _render_preview(prepared.preview.to_dict())
                displayed = True
                ok = typer.confirm(f"Send this bundle to {upload or (enrollment.collector if enrollment else '')}?")
                confirmed = "interactive" if ok else "declined"
            else:
                confirmed = "non-interactive"
        consent = Consent(
            confirmed=confirmed,
            displayed=displayed,
            upload_requested=wants_upload,
            only=tuple(only or ()),
            exclude=tuple(exclude or ()),
        )
        done = prepared.seal(output, state.key(), consent)
    for unread in sorted(set(done.result.unread_options) & set(asked)):
        err.print(
            f"warning: --set {unread}: no collector of this run reads it (misspelt, or its collector did not run;"
            " README lists the options)",
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
    if wants_upload and confirmed in ("yes-flag", "interactive", "non-interactive"):
        try:
            receipt = _upload(
                b.path, b.bundle_id, state, upload, token, ca_fingerprint, ca_file, insecure,
                key=state.key(), show_progress=not as_json,
            )  # fmt: skip
        except TransportError as exc:
            # The bundle is written: say where it is and how to send it once the collector answers.
            later = _send_later(b.path, upload, ca_fingerprint, ca_file, insecure, home, state, token)
            if as_json:
                summary["upload"] = {"collector": upload or (enrollment.collector if enrollment else ""),
                                     "error": str(exc), "send_later": later}  # fmt: skip
                print(json.dumps(summary, indent=1))
            else:
                _render_summary(summary)
                err.print(f"Not sent: {exc}", soft_wrap=True, highlight=False, markup=False)
                err.print(f"The bundle stays at {b.path}; send it later with: {later}",
                          soft_wrap=True, highlight=False, markup=False)  # fmt: skip
            raise typer.Exit(3) from None
        summary["upload"] = {
            "collector": upload or (enrollment.collector if enrollment else ""),
            "agent_id": receipt.agent_id,
            "received_at": receipt.received_at.ToJsonString(),
            "sha256": receipt.sha256,
        }
    if as_json:
        print(json.dumps(summary, indent=1))
    else:
        _render_summary(summary)
    if confirmed == "declined":
        later = _send_later(b.path, upload, ca_fingerprint, ca_file, insecure, home, state, token)
        # One line to copy: not wrapped, not coloured, and a "[" in a path is not markup.
        err.print(
            f"Not sent. The bundle stays at {b.path}; send it later with: {later}",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )


def _send_later(
    path: Path,
    upload: str | None,
    ca_fingerprint: str | None,
    ca_file: Path | None,
    insecure: bool,
    home: Path | None,
    state: AgentHome,
    token: str | None,
) -> str:
    """The one command that sends a written bundle later (the token itself is never printed)."""
    return " ".join(
        [f"casefile upload {path}"]
        + ([f"--to {upload}"] if upload else [])
        + ([f"--ca-fingerprint {ca_fingerprint}"] if ca_fingerprint else [])
        + ([f"--ca-file {ca_file}"] if ca_file else [])
        + (["--insecure"] if insecure else [])
        + (["--home", str(state.root)] if home else [])
        # From the environment the token is found again; on the command line it is named only.
        + (["--token", "<the case token>"] if token and "CASEFILE_TOKEN" not in os.environ else [])
    )


def _collector_offset(
    home: AgentHome, address: str, ca_fingerprint: str | None, ca_file: Path | None, insecure: bool
) -> float | None:
    """Collector clock minus ours (ms); None when it cannot be read (the upload will say why)."""
    from agent.transport import measure_clock_offset

    try:
        with _channel(address, ca_fingerprint, ca_file, insecure, home) as channel:
            return measure_clock_offset(channel)
    except CasefileError:
        return None


def _split_selectors(values: list[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(collector names, artifact path globs): a value with / * ? [ is a path glob.

    Names may also come comma-separated, as sos takes them (``--only logs,processes``).
    """
    names: list[str] = []
    globs: list[str] = []
    for v in values or ():
        if any(c in v for c in "/*?["):
            globs.append(v)
        else:
            listed = [n.strip() for n in v.split(",") if n.strip()]
            if not listed:  # an empty list must not mean "everything"
                raise typer.BadParameter(f"{v!r} names no collector")
            names.extend(listed)
    return tuple(names), tuple(globs)


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


@app.command()
def unmask(
    text: Annotated[str, typer.Argument(help="Text with tokens, or a file holding it ('-' for stdin).")],
    home: HomeOpt = None,
) -> None:
    """Put the real values back for tokens made on THIS machine (the map never leaves it)."""
    from agent.redact import load_mapping, unmask_text

    state = AgentHome(home)
    source = Path(text)
    if text == "-":
        data = sys.stdin.read()
    elif source.is_file():
        data = source.read_text("utf-8", errors="surrogateescape")
    else:
        data = text
    restored, n, unknown = unmask_text(data, load_mapping(state.root))
    sys.stdout.write(restored if restored.endswith("\n") else restored + "\n")
    if unknown:
        err.print(f"{unknown} token(s) not in this machine's map (made elsewhere or with another key)")
    if not n and not unknown:
        err.print("no tokens found")


def _render_summary(s: dict[str, Any]) -> None:
    from agent.render import print_summary

    print_summary(out, s)
    b = s["bundle"]
    out.print(f"Bundle: [bold]{b['path']}[/] ({b['size']:,} bytes, collected in {b['collect_seconds']} s)")
    out.print(f"Signed by key {b['key_fingerprint']}")
    if "upload" in s:
        u = s["upload"]
        out.print(f"[green]Uploaded[/] to {u['collector']} at {u['received_at']} (agent {u['agent_id']})")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="The .tar.zst bundle to check.")],
    key: Annotated[
        Path | None, typer.Option("--key", help="Expected signer public key (PEM, base64 or hex file).")
    ] = None,
    fingerprint: Annotated[
        str | None, typer.Option("--fingerprint", help="Expected signer key fingerprint sha256:<hex>.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a bundle: signature, every member's hash, no missing/extra members, no unsafe paths."""
    from agent.bundle import verify_bundle
    from agent.keys import load_public_key

    expected = load_public_key(key.read_bytes()) if key else None
    try:
        vb = verify_bundle(bundle, expected_key=expected, expected_fingerprint=fingerprint)
    except VerificationError as exc:
        if as_json:  # a script asked for JSON: it gets JSON on failure too (and exit 1)
            print(json.dumps({"ok": False, "bundle": str(bundle), "error": str(exc)}, indent=1))
        raise
    m = vb.manifest
    result = {
        "ok": True,
        "casefile_version": __version__,
        "bundle_id": m.get("bundle_id"),
        "hostname": m.get("hostname"),
        "case_id": m.get("case_id"),
        "created_at": m.get("created_at"),
        "members": len(vb.members),
        "key_fingerprint": vb.public_key.fingerprint,
        "key_pinned": vb.key_pinned,
    }
    if as_json:
        print(json.dumps(result, indent=1))
        return
    out.print(f"[green]OK[/] {bundle}: {len(vb.members)} members match the signed manifest")
    who = "the expected key" if vb.key_pinned else "the key embedded in the manifest"
    out.print(f"signed by {vb.public_key.fingerprint} ({who})")
    if not vb.key_pinned:
        out.print("[yellow]note[/]: pass --fingerprint or --key to check WHO signed it, not only that it is intact")


@app.command("upload")
def upload_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle written by 'casefile collect'.")],
    to: Annotated[
        str | None, typer.Option("--to", "--upload", help="Collector HOST:PORT (default: the enrolled one).")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="CASEFILE_TOKEN", help="Case token from support.")
    ] = None,
    ca_fingerprint: CaFingerprintOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    home: HomeOpt = None,
) -> None:
    """Send an existing bundle; resumes where an interrupted upload stopped.

    With a case token it may be any bundle of that case, made on this machine or
    carried from another (a technician's laptop): it is verified against the key that
    signed it, and the collector records that key as its origin. Without a token an
    enrolled agent sends only bundles its own key signed. Nothing is written to the
    home: with no key there, a key derived from the token proves the upload.
    """
    from agent.bundle import verify_bundle
    from agent.courier import courier_key

    state = AgentHome(home)
    own = state.existing_key()
    if token:
        vb = verify_bundle(bundle)
        key = own or courier_key(token)
    else:
        if own is None or state.enrollment() is None:
            raise typer.BadParameter("uploading needs --token (a case token from support) or an enrolled agent")
        vb = verify_bundle(bundle, expected_key=own.public)
        key = own
    receipt = _upload(
        bundle, str(vb.manifest["bundle_id"]), state, to, token, ca_fingerprint, ca_file, insecure,
        key=key, show_progress=True,
    )  # fmt: skip
    out.print(f"[green]Uploaded[/] {bundle.name}: bundle {receipt.bundle_id}, sha256 {receipt.sha256[:16]}…")
    if vb.public_key.fingerprint != key.fingerprint:
        out.print(f"signed by {vb.public_key.fingerprint}; delivered by key {key.fingerprint}")


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
    with _channel(collector, ca_fingerprint, ca_file, insecure) as channel:
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
                    e.get("requested_by", ""),
                    e.get("scopes") or [],
                    e.get("reason", ""),
                    e.get("outcome", ""),
                    e.get("bundle_id") or e.get("detail") or "",
                )
            )
        )
    out.print(t)


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
