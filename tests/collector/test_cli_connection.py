"""Every engineer command of ``casefile-collector`` takes the same five connection
options, declared once (``collector.cli_common.Connection``): the same names, the same
environment variables, the same defaults; operator commands talk to no collector."""

from __future__ import annotations

from typing import Any

import typer.main

from collector.cli import app
from collector.cli_common import Connection

ENGINEER = {
    "hosts", "bundles", "show", "download", "findings", "timeline", "diff", "report", "snapshot", "audit",
    "query", "hunt create", "hunt status", "hunt results",
}  # fmt: skip
OPERATOR = {"serve", "migrate", "tls-fingerprint", "import", "reanalyze", "token create", "token list", "token revoke"}
CONNECTION = {
    "collector": (["--collector"], "CASEFILE_COLLECTOR", True),
    "token": (["--token"], "CASEFILE_TOKEN", True),
    "ca_fingerprint": (["--ca-fingerprint"], "CASEFILE_CA_FINGERPRINT", False),
    "ca_file": (["--ca-file"], None, False),
    "insecure": (["--insecure"], None, False),
}


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (typer brings its own click)
            found.update(_commands(cmd, f"{prefix}{name} "))
        else:
            found[prefix + name] = cmd
    return found


def test_each_engineer_command_takes_the_five_connection_options_and_no_operator_command_does() -> None:
    root = typer.main.get_command(app)
    commands = _commands(root)
    assert set(commands) >= ENGINEER | OPERATOR
    for name, cmd in commands.items():
        params = {p.name: p for p in cmd.params if p.param_type_name == "option"}
        if name in ENGINEER:
            for field, (opts, envvar, required) in CONNECTION.items():
                opt = params[field]
                assert (opt.opts, opt.envvar, opt.required) == (opts, envvar, required), (name, field)
        else:  # on the collector's own data folder (serve's --insecure is its own: plaintext serving)
            assert "collector" not in params and "ca_fingerprint" not in params, name


def test_a_connection_names_the_options_in_their_order() -> None:
    conn = Connection("127.0.0.1:7443", "tok")
    assert (conn.ca_fingerprint, conn.ca_file, conn.insecure) == (None, None, False)
