"""What every ``casefile`` command module shares: the app, the consoles, the home and
collector-trust options, and opening a channel to (and uploading to) a collector.
``agent.cli`` (entry point, ``collect``), ``agent.cli_bundle``, ``agent.cli_agent`` and
``agent.cli_analysis`` build on it; it imports none of them (no import circle)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agent.cli_analysis import register as register_analysis_commands
from agent.cli_version import add_version_option
from agent.console import lazy_console
from agent.state import AgentHome

if TYPE_CHECKING:
    from agent.keys import SigningKey

__all__ = [
    "CaFileOpt",
    "CaFingerprintOpt",
    "HomeOpt",
    "InsecureOpt",
    "agent_app",
    "app",
    "err",
    "open_collector_channel",
    "out",
    "upload_to_collector",
]

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


def open_collector_channel(
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


def upload_to_collector(
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
    from agent.collect_request import RequestError, upload_target
    from agent.transport import upload_bundle

    enrollment = home.enrollment()
    if address is None and enrollment is not None:
        address = enrollment.collector
    if address is None:
        raise typer.BadParameter("no collector: pass --upload HOST:PORT (or enroll this agent first)")
    try:
        target = upload_target(key, token=token, agent_id=enrollment.agent_id if enrollment else None)
    except RequestError as exc:
        raise typer.BadParameter(str(exc)) from None
    from agent.cli_progress import TransferProgress

    # On a terminal only: a script or --json reads the same bytes as before.
    with (
        open_collector_channel(address, ca_fingerprint, ca_file, insecure, home) as channel,
        TransferProgress(err, f"uploading to {address}", enabled=show_progress and err.is_terminal) as bar,
    ):
        return upload_bundle(channel, path, bundle_id=bundle_id, target=target, progress=bar.update)
