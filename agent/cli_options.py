"""``casefile options``: every collector option ``--set`` takes, from the declarations.

The same listing as the README's option table (``agent.collect.options_doc``), but of the
collectors installed here: the built-ins and every plugin that loaded.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from agent.cli_common import app, err, out


@app.command()
def options(
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
) -> None:
    """List the collector options `casefile collect --set KEY=VALUE` takes (plugins' included)."""
    from agent.collect import registered_collectors
    from agent.collect.options_doc import option_rows

    registry = registered_collectors()
    rows = option_rows(registry.collectors)
    if as_json:
        print(json.dumps({"options": [r.to_dict() for r in rows]}, indent=1, default=str))
        return
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=False)
    for column in ("option", "type", "default", "range", "read by", "what it does"):
        table.add_column(column, overflow="fold")
    for row in rows:
        opt = row.option
        readers = ", ".join(r or "(runner)" for r in row.readers)
        table.add_row(opt.name, opt.type_name, opt.default_text(), opt.bounds_text(), readers, opt.help)
    out.print(table, highlight=False, markup=False)
    out.print("Set one with: casefile collect --set NAME=VALUE (repeat --set for more).", highlight=False)
    for broken in registry.broken:
        err.print(f"plugin {broken.name} did not load, its options are unknown: {broken.error}", markup=False)
