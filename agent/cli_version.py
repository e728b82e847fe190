"""``--version`` for both command lines (``casefile`` and ``casefile-collector``)."""

# No ``from __future__ import annotations`` here: typer reads the option's annotation at
# run time, and it names a callback local to add_version_option, which only an evaluated
# annotation can see.
import sys
from typing import Annotated

import typer

from agent.version import __version__, build

__all__ = ["add_version_option"]


def add_version_option(app: typer.Typer, program: str) -> None:
    """Give ``app`` a ``--version`` that prints "<program> <version>" and exits 0."""

    def show(value: bool) -> None:
        if value:
            stamp = build()
            sys.stdout.write(f"{program} {__version__}" + (f" ({stamp})" if stamp else "") + "\n")
            raise typer.Exit(0)

    @app.callback()
    def _root(
        version: Annotated[
            bool, typer.Option("--version", help="Print the version and exit.", callback=show, is_eager=True)
        ] = False,
    ) -> None:
        # The app's own help text stays the one given to typer.Typer(help=…).
        pass
