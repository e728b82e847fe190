"""``casefile collect --spec FILE|NAME``: run one collection spec with a one-shot collection.

The spec is loaded and checked first (a built-in name, or a signed file whose signer
``policy.json`` trusts: ``agent.specs.trust``); then what it will read and run *here* is
shown — the files its globs match now, the logs, every command's argument list and
bounds — before anything of it runs. ``--preview`` runs none of it (the rest of the
run is previewed as usual, the plan beside it). On a terminal the
customer confirms (``--yes`` skips that); a script's ``--spec`` is the instruction itself.
The spec then runs as one more collector of the run (``agent.specs.runner``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from agent.collect import CollectionSpec, Collector
from agent.console import lazy_console
from agent.specs.runner import PARAM_OPTION_PREFIX

if TYPE_CHECKING:
    from agent.specs.model import Spec

__all__ = ["SpecRun", "prepare_spec", "render_plan"]

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


@dataclass(frozen=True)
class SpecRun:
    """What ``--spec`` adds to a run: its collector (none in a preview), the adjusted
    collection spec, and the plan that was shown (a preview's JSON carries it)."""

    extra: tuple[type[Collector], ...]
    spec: CollectionSpec
    plan: dict[str, Any]


def _check_parameters(spec: Spec, options: Mapping[str, object]) -> None:
    prefix = PARAM_OPTION_PREFIX
    declared = spec.parameter_defaults()
    unknown = sorted(k for k in options if k.startswith(prefix) and k[len(prefix) :] not in declared)
    if unknown:
        known = ", ".join(prefix + p for p in declared) or "none"
        raise ValueError(f"--set {unknown[0]}: spec {spec.name} has no such parameter (its parameters: {known})")


def prepare_spec(arg: str, home: Path, spec: CollectionSpec, *, preview: bool, as_json: bool, yes: bool) -> SpecRun:
    """The spec's collector and the collection spec adjusted for it, the plan shown first.

    In a ``--preview`` nothing of the spec runs: the plan is shown (on stderr; in the
    preview's JSON under ``spec``) and the rest of the run is previewed as without it.
    A declined confirmation exits 1.
    """
    from agent.specs import SpecError
    from agent.specs.runner import parameters, plan_of, spec_budget, spec_collector
    from agent.specs.trust import load_spec_arg

    try:
        loaded = load_spec_arg(arg, home)
        _check_parameters(loaded.spec, spec.options)
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
    if not as_json:
        render_plan(doc)
    if preview:
        if not as_json:
            err.print(
                "preview: of the spec, nothing was read or run; the rest of the run is previewed below",
                highlight=False,
                markup=False,
            )
        return SpecRun((), spec, doc)
    if not yes and sys.stdin.isatty() and sys.stderr.isatty() and not typer.confirm("Run this spec?", err=True):
        raise typer.Exit(1)
    cls = spec_collector(loaded.spec, loaded.origin())
    only = (*spec.only, cls.name) if spec.only else ()
    total = max(spec.total_budget_s, spec_budget(loaded.spec) + 2.0)
    return SpecRun((cls,), dataclasses.replace(spec, only=only, total_budget_s=total), doc)
