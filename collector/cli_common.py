"""What every ``casefile-collector`` command module shares: the app, the consoles, the
data-folder options, the one declaration of the engineer commands' connection options
(``engineer_command`` and ``Connection``), the store and query openers, and how stored
text is shown. ``collector.cli`` (entry point, operator commands), ``collector.cli_tokens``,
``collector.cli_engineer``, ``collector.cli_live``, ``collector.cli_fleet`` and
``collector.cli_hunt`` build on it; it imports none of them (no import circle)."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import getpass
import inspect
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from agent import units
from agent.cli_version import add_version_option
from agent.identity_text import display

app = typer.Typer(
    name="casefile-collector",
    help="The Casefile collector: serve, issue tokens, and query bundles.",
    no_args_is_help=True,
    add_completion=False,
)

add_version_option(app, "casefile-collector")



out = Console()
err = Console(stderr=True)

DataDirOpt = Annotated[
    Path, typer.Option("--data-dir", envvar="CASEFILE_DATA_DIR", help="Collector data folder (SQLite, blobs, TLS).")
]
DbUrlOpt = Annotated[
    str | None, typer.Option("--db-url", envvar="CASEFILE_DB_URL", help="SQLAlchemy URL; default SQLite in --data-dir.")
]
CollectorOpt = Annotated[str, typer.Option("--collector", envvar="CASEFILE_COLLECTOR", help="Collector HOST:PORT.")]
TokenOpt = Annotated[str, typer.Option("--token", envvar="CASEFILE_TOKEN", help="Engineer token.")]
CaFpOpt = Annotated[
    str | None, typer.Option("--ca-fingerprint", envvar="CASEFILE_CA_FINGERPRINT", help="Pinned collector certificate.")
]
CaFileOpt = Annotated[Path | None, typer.Option("--ca-file", help="Trust this CA/certificate PEM.")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Plaintext (loopback only).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@dataclass(frozen=True)
class Connection:
    """Which collector an engineer command talks to, as whom, and how it trusts it.

    Each field is one command-line option of every engineer command (``--collector``,
    ``--token``, ``--ca-fingerprint``, ``--ca-file``, ``--insecure``), declared once in
    ``_CONNECTION_OPTIONS`` and added to a command by ``engineer_command``.
    """

    collector: str
    token: str
    ca_fingerprint: str | None = None
    ca_file: Path | None = None
    insecure: bool = False

    def open(self) -> tuple[Any, Any, Any]:
        """``(channel, Query stub, call metadata)``; close the channel when done."""
        return _query(self.collector, self.token, self.ca_fingerprint, self.ca_file, self.insecure)


_KW = inspect.Parameter.KEYWORD_ONLY
_CONNECTION_OPTIONS = (
    inspect.Parameter("collector", _KW, annotation=CollectorOpt),
    inspect.Parameter("token", _KW, annotation=TokenOpt),
    inspect.Parameter("ca_fingerprint", _KW, default=None, annotation=CaFpOpt),
    inspect.Parameter("ca_file", _KW, default=None, annotation=CaFileOpt),
    inspect.Parameter("insecure", _KW, default=False, annotation=InsecureOpt),
)
assert [p.name for p in _CONNECTION_OPTIONS] == [f.name for f in fields(Connection)]

_Command = TypeVar("_Command", bound=Callable[..., Any])


def engineer_command(on: typer.Typer, name: str | None = None) -> Callable[[_Command], _Command]:
    """Register an engineer command on ``on``: where the function takes ``conn: Connection``
    the command line takes the five connection options, in that place of ``--help``.

    The function itself is returned unchanged, so one command can run another
    (``snapshot`` shows the bundle it brought with ``show``).
    """

    def register(command: _Command) -> _Command:
        signature = inspect.signature(command)
        hints = typing.get_type_hints(command, include_extras=True)
        if "conn" not in signature.parameters:
            raise TypeError(f"{command.__name__} takes no conn: Connection parameter")
        params: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            if param.name == "conn":
                params.extend(_CONNECTION_OPTIONS)
            else:  # keyword-only: required options may follow ones with defaults
                params.append(param.replace(kind=_KW, annotation=hints.get(param.name, param.annotation)))

        @functools.wraps(command)
        def run(**options: Any) -> Any:
            conn = Connection(*(options.pop(p.name) for p in _CONNECTION_OPTIONS))
            return command(conn=conn, **options)

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params} | {"return": hints.get("return")}
        on.command(name)(run)
        return command

    return register

def shown(text: str) -> str:
    """Stored or server-sent text for the terminal: control and bidi characters escaped
    (a host name with ESC sequences must not rewrite the engineer's screen), and rich
    markup inert (a label "[red]…" prints as typed)."""
    return escape(display(text))


def _shown_tree(value: Any) -> Any:
    """Every string in a JSON-shaped value through :func:`shown` (a bundle's facts)."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {k: _shown_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown_tree(v) for v in value]
    return value


def parse_duration(text: str) -> dt.timedelta:
    try:
        return units.parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def parse_when(text: str) -> dt.datetime:
    """An ISO 8601 time (UTC if no zone) or a duration ago such as 2h."""
    try:
        return dt.datetime.now(dt.UTC) - units.parse_duration(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"expected an ISO time or a duration like 2h, got {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _store(data_dir: Path, db_url: str | None, *, read_only: bool = False) -> Any:
    """The collector's store; a command that only reads never makes a data folder."""
    from collector.server import default_db_url
    from collector.storage import Store

    if read_only and db_url is None and not (data_dir / "casefile.db").exists():
        raise typer.BadParameter(
            f"no collector data in {data_dir.resolve()}: pass --data-dir (or set CASEFILE_DATA_DIR) to the folder"
            " `casefile-collector serve` uses",
            param_hint="--data-dir",
        )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(PermissionError):  # a folder made by a package may be 0755
        data_dir.chmod(0o700)
    return Store.open(db_url or default_db_url(data_dir))


def _audit_operator(store: Any, action: str, target: str, outcome: str, detail: str) -> None:
    """Audit a token change made on the server with this CLI: the actor is "operator"
    (the local user in the label), the target is the token id, never the token."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    store.audit(
        actor="operator",
        actor_label=f"{user} (casefile-collector CLI)",
        role="operator",
        action=action,
        target=target,
        peer="local",
        outcome=outcome,
        detail=detail,
    )


def _query(
    collector: str, token: str, ca_fingerprint: str | None, ca_file: Path | None, insecure: bool
) -> tuple[Any, Any, Any]:
    from agent.transport import open_channel, parse_address
    from protos import collector_pb2_grpc

    channel = open_channel(
        parse_address(collector),
        ca_fingerprint=ca_fingerprint,
        ca_pem=ca_file.read_bytes() if ca_file else None,
        insecure=insecure,
    )
    return channel, collector_pb2_grpc.QueryStub(channel), (("authorization", f"Bearer {token}"),)


def _fmt_us(us: int | None) -> str:
    if us is None:
        return "never"
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _fmt_ts(ts: Any) -> str:
    return str(ts.ToDatetime(tzinfo=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"))
