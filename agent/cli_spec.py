"""``casefile collect --spec FILE|NAME``: run one collection spec with a one-shot collection.

The spec is loaded and checked first (a built-in name, or a signed file whose signer
``policy.json`` trusts: ``agent.specs.trust``); then what it will read and run *here* is
shown — the files its globs match now, the logs, every command's argument list and
bounds — before anything of it runs. ``--preview`` stops there. On a terminal the
customer confirms (``--yes`` skips that); a script's ``--spec`` is the instruction itself.
The spec then runs as one more collector of the run (``agent.specs.runner``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import typer

from agent.collect import CollectionSpec, Collector, registered_collectors
from agent.console import lazy_console

__all__ = ["prepare_spec", "render_plan"]

err = lazy_console(stderr=True)


def render_plan(doc: dict[str, Any]) -> None:
    """The plan on stderr, plainly: what will be read and what will run."""
    p = err.print
    p(f"spec {doc['name']} v{doc['version']} ({doc['signer']}): {doc['description']}", highlight=False, markup=False)
    for f in doc["plan"]["files"]:
        shown = ", ".join(f["matches"]) or "nothing matches now"
        p(f"  read file  {f['glob']} (≤ {f['max_bytes']} bytes each): {shown}", highlight=False, markup=False)
        for why in f["refused"]:
            p(f"    refused: {why}", highlight=False, markup=False)
    for log in doc["plan"]["logs"]:
        shown = ", ".join(log["matches"]) or "nothing matches now"
        p(f"  read log   {log['name']}: {log['glob']}: {shown}", highlight=False, markup=False)
    for c in doc["plan"]["commands"]:
        argv = " ".join(json.dumps(a) if (" " in a or not a) else a for a in c["argv"])
        p(
            f"  run        {argv}  (killed after {c['timeout_s']:g} s, ≤ {c['max_bytes']} bytes kept)",
            highlight=False,
            markup=False,
        )
    if doc["plan"]["redact"]:
        p(
            f"  redact     {', '.join(doc['plan']['redact'])} (besides the standard rules)",
            highlight=False,
            markup=False,
        )


def prepare_spec(
    arg: str, home: Path, spec: CollectionSpec, *, preview: bool, as_json: bool, yes: bool
) -> tuple[tuple[type[Collector], ...], CollectionSpec]:
    """The run's collectors with the spec's added, and the collection spec adjusted for it.

    Shows the plan first; ``--preview`` exits after it, a declined confirmation exits 1.
    """
    from agent.specs import SpecError
    from agent.specs.runner import parameters, plan_of, spec_budget, spec_collector
    from agent.specs.trust import load_spec_arg

    try:
        loaded = load_spec_arg(arg, home)
        params = parameters(loaded.spec, spec.options)
    except (SpecError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--spec") from None
    doc = {
        "name": loaded.spec.name,
        "version": loaded.spec.version,
        "description": loaded.spec.description,
        **loaded.origin(),
        "parameters": params,
        "plan": plan_of(loaded.spec, params),
    }
    if preview and as_json:
        print(json.dumps({"spec": doc}, indent=1))
        raise typer.Exit(0)
    render_plan(doc)
    if preview:
        err.print("preview: nothing was read or run", highlight=False, markup=False)
        raise typer.Exit(0)
    if not yes and sys.stdin.isatty() and sys.stderr.isatty() and not typer.confirm("Run this spec?", err=True):
        raise typer.Exit(1)
    cls = spec_collector(loaded.spec, loaded.origin())
    collectors = (*registered_collectors().collectors, cls)
    only = (*spec.only, cls.name) if spec.only else ()
    total = max(spec.total_budget_s, spec_budget(loaded.spec) + 2.0)
    return collectors, dataclasses.replace(spec, only=only, total_budget_s=total)
