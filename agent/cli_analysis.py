"""``casefile findings|timeline|diff|report``: analysis commands (a thin shell over agent.analysis).

Exit status of ``casefile findings`` (and ``casefile report``) signals the worst finding,
so scripts can gate on it:

  0   no findings, or only info findings
  10  at least one warning
  20  at least one critical finding

Other failures keep the CLI's usual codes: 1 verification failed, 2 usage error,
4 any other Casefile error (e.g. ``diff`` of bundles from different hosts without --force).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agent.console import lazy_console

if TYPE_CHECKING:
    from agent.analysis import BundleView

__all__ = ["register"]

_out = lazy_console(width=100)

BundleArg = Annotated[Path, typer.Argument(help="A bundle (.tar.zst); verified before it is read.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
KeyOpt = Annotated[Path | None, typer.Option("--key", help="Expected signer public key file.")]



def _print_json(doc: dict[str, Any]) -> None:
    """One JSON document, carrying the version that made it (as every --json answer does)."""
    from agent.version import __version__

    print(json.dumps({**doc, "casefile_version": __version__}, indent=1, ensure_ascii=False))

def _view(path: Path, key: Path | None) -> BundleView:
    from agent.analysis import BundleView
    from agent.keys import load_public_key

    return BundleView.from_file(path, expected_key=load_public_key(key.read_bytes()) if key else None)


def findings(bundle: BundleArg, as_json: JsonOpt = False, key: KeyOpt = None) -> None:
    """Run every rule over a bundle; exit 0 (none/info), 10 (warning) or 20 (critical)."""
    from agent.analysis import analyse
    from agent.analysis.report_text import print_findings

    view = _view(bundle, key)
    a = analyse(view)
    if as_json:
        _print_json(a.findings.to_dict())
    else:
        print_findings(a, _out)
    raise typer.Exit(a.findings.exit_code)


def timeline(
    bundle: BundleArg,
    as_json: JsonOpt = False,
    interval: Annotated[
        str | None, typer.Option("--interval", help="Bucket size: 30s, 5m, 1h (default: from the window).")
    ] = None,
    key: KeyOpt = None,
) -> None:
    """Errors and warnings per interval on one UTC clock, and when the burst began."""
    from agent.analysis import build_timeline, parse_interval
    from agent.analysis.errors import AnalysisError
    from agent.analysis.report_text import print_timeline

    try:
        seconds = parse_interval(interval) if interval else None
    except AnalysisError as exc:
        raise typer.BadParameter(str(exc), param_hint="--interval") from None
    view = _view(bundle, key)
    tl = build_timeline(view, seconds)
    if as_json:
        _print_json(tl.to_dict())
    else:
        print_timeline(tl, _out)


def diff(
    a: Annotated[Path, typer.Argument(help="The older bundle.")],
    b: Annotated[Path, typer.Argument(help="The newer bundle.")],
    as_json: JsonOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Compare even when the hosts differ.")] = False,
) -> None:
    """What changed between two bundles of the same host, fact by fact."""
    from agent.analysis import BundleView, diff_bundles
    from agent.analysis.report_text import print_diff

    va, vb = BundleView.from_file(a), BundleView.from_file(b)
    d = diff_bundles(va, vb, force=force)
    if as_json:
        _print_json(d.to_dict())
    else:
        print_diff(d, _out)


def report(
    bundle: Annotated[Path | None, typer.Argument(help="A bundle; without one, collect now.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the HTML report to this file.")] = None,
    as_json: JsonOpt = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder for a fresh bundle (default: a temporary one).")
    ] = None,
    home: Annotated[Path | None, typer.Option("--home", help="Agent state folder (key).")] = None,
) -> None:
    """Findings first, then key facts; from a bundle or from a fresh collection. Exit code as `findings`."""
    from agent.analysis import BundleView, analyse, render_html
    from agent.analysis.report_text import print_report

    with tempfile.TemporaryDirectory(prefix="casefile-report-") as tmp:
        if bundle is None:
            from agent.oneshot import collect_bundle
            from agent.state import AgentHome

            state = AgentHome(home)
            done = collect_bundle(key=state.key(), output_dir=output or Path(tmp))
            bundle = done.bundle.path
            if html is None and output is not None:
                html = bundle.with_name(bundle.name.removesuffix(".tar.zst") + ".report.html")
        view = BundleView.from_file(bundle)
        a = analyse(view)
        if html is not None:
            partial = html.with_name(f".{html.name}.partial")
            partial.write_text(render_html(a), encoding="utf-8")
            partial.replace(html)
        if as_json:
            doc = {"bundle": str(bundle) if output or bundle.parent != Path(tmp) else None,
                   "findings": a.findings.to_dict(), "timeline": a.timeline.to_dict(),
                   "html": str(html) if html else None}
            _print_json(doc)
        else:
            print_report(a, _out)
            if html is not None:
                _out.print(f"HTML report: [bold]{html}[/]")
    raise typer.Exit(a.findings.exit_code)


def register(app: typer.Typer) -> None:
    """Add the analysis commands to the ``casefile`` app."""
    app.command("findings")(findings)
    app.command("timeline")(timeline)
    app.command("diff")(diff)
    app.command("report")(report)
