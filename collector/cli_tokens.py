"""``casefile-collector token create|list|revoke``: enrollment, case and engineer tokens,
made on the collector's own data folder (operator commands; every change audited)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from agent.identity_text import identity_problem
from collector.cli_common import (
    DataDirOpt,
    DbUrlOpt,
    JsonOpt,
    _audit_operator,
    _fmt_us,
    _store,
    app,
    out,
    parse_duration,
    shown,
)

token_app = typer.Typer(help="Enrollment, case and engineer tokens (shown once, stored hashed).", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    kind: Annotated[str, typer.Option("--kind", help="enroll | case | engineer")],
    role: Annotated[str | None, typer.Option("--role", help="viewer | engineer | admin (engineer tokens)")] = None,
    case: Annotated[str | None, typer.Option("--case", help="Case id (case tokens).")] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Lifetime like 24h or 7d; default: enroll 24h, case 14d, engineer 30d.")
    ] = None,
    uses: Annotated[
        int | None, typer.Option("--uses", help="Maximum uses (default: 1 for enroll, unlimited otherwise).")
    ] = None,
    label: Annotated[str, typer.Option("--label", help="Who or what it is for (shown in the audit log).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the token.")] = False,
    data_dir: DataDirOpt = Path("casefile-data"),
    db_url: DbUrlOpt = None,
) -> None:
    """Create a token. It is printed once; only its hash is stored."""
    defaults = {"enroll": ("24h", 1), "case": ("14d", None), "engineer": ("30d", None)}
    if kind not in defaults:
        raise typer.BadParameter("--kind must be enroll, case or engineer")
    if kind == "engineer" and role is None:
        role = "viewer"
    if kind == "case" and not case:
        raise typer.BadParameter("a case token needs --case ID (the support case it uploads to)")
    # Both are printed to engineers and written to the audit log: plain printable text.
    for option, value in (("--label", label), ("--case", case)):
        if value and (problem := identity_problem(value)) is not None:
            raise typer.BadParameter(f"{option} {problem}")
    store = _store(data_dir, db_url)
    try:
        plain, rec = store.create_token(
            kind,
            role=role,
            case_id=case,
            label=label,
            ttl=parse_duration(ttl or defaults[kind][0]),
            max_uses=uses if uses is not None else defaults[kind][1],
        )
        _audit_operator(
            store,
            "token.create",
            rec.id,
            "ok",
            f"kind {kind}{', role ' + str(rec.role) if rec.role else ''}"
            f"{', case ' + str(rec.case_id) if rec.case_id else ''}, label {label!r}, "
            f"uses {rec.max_uses if rec.max_uses is not None else 'unlimited'}, expires {_fmt_us(rec.expires_at_us)}",
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    finally:
        store.close()
    if quiet:
        print(plain)
        return
    out.print(
        f"token id {rec.id} ({kind}{', role ' + str(rec.role) if rec.role else ''}"
        f"{', case ' + str(rec.case_id) if rec.case_id else ''}), expires {_fmt_us(rec.expires_at_us)}"
    )
    out.print("[bold]Store it now; it is not shown again:[/]")
    print(plain)


@token_app.command("list")
def token_list(data_dir: DataDirOpt = Path("casefile-data"), db_url: DbUrlOpt = None, as_json: JsonOpt = False) -> None:
    """List tokens (ids and metadata; the secrets are not stored)."""
    store = _store(data_dir, db_url, read_only=True)
    try:
        rows = store.list_tokens()
    finally:
        store.close()
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "kind": r.kind,
                        "role": r.role,
                        "case_id": r.case_id,
                        "label": r.label,
                        "uses": r.uses,
                        "max_uses": r.max_uses,
                        "expires_at": _fmt_us(r.expires_at_us),
                        "revoked": r.revoked_at_us is not None,
                    }
                    for r in rows
                ],
                indent=1,
            )
        )
        return
    # The id whole, never cut: it is what `token revoke` takes.
    if db_url:
        from sqlalchemy import make_url

        where = make_url(db_url).render_as_string(hide_password=True)
    else:
        where = str(data_dir.resolve())
    out.print(f"Tokens in {where}", soft_wrap=True, highlight=False, markup=False)
    t = Table(Column("id", no_wrap=True), "kind", "role", "case", "label", "uses", "expires", "revoked")
    for r in rows:
        t.add_row(
            shown(r.id),
            r.kind,
            shown(r.role or ""),
            shown(r.case_id or ""),
            shown(r.label),
            f"{r.uses}/{r.max_uses if r.max_uses is not None else '∞'}",
            _fmt_us(r.expires_at_us),
            "yes" if r.revoked_at_us is not None else "",
        )
    out.print(t)


@token_app.command("revoke")
def token_revoke(token_id: str, data_dir: DataDirOpt = Path("casefile-data"), db_url: DbUrlOpt = None) -> None:
    """Revoke a token by its id."""
    from collector.storage.errors import NotFound

    store = _store(data_dir, db_url, read_only=True)
    try:
        try:
            store.revoke_token(token_id)
        except NotFound as exc:
            _audit_operator(store, "token.revoke", token_id, "not_found", str(exc))
            raise
        _audit_operator(store, "token.revoke", token_id, "ok", "")
    finally:
        store.close()
    out.print(f"revoked {token_id}")
