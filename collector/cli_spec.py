"""``casefile-collector spec keygen|sign|add|list|show``: signed collection specs.

Support keeps one Ed25519 signing key (``keygen``, mode 0600) and signs each spec's YAML
with it (``sign``: the bundles' signature format, with an expiry); a customer's policy
trusts that key's fingerprint (``spec_signers``), not every engineer. ``add`` verifies
a signed spec and stores it in the collector's database (operator command, audited);
``list`` and ``show`` read them back. See docs/specs.md.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from collector.cli_common import DataDirOpt, DbUrlOpt, JsonOpt, _audit_operator, _store, out, parse_duration, shown

__all__ = ["spec_app"]

spec_app = typer.Typer(help="Signed collection specs: sign, store and show them (operator).", no_args_is_help=True)


def _iso_us(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@spec_app.command("keygen")
def spec_keygen(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write the new private key (0600).")],
) -> None:
    """Make a spec signing key; prints its fingerprint for the customers' spec_signers."""
    from agent.errors import KeyStoreError
    from agent.keys import SigningKey

    key = SigningKey.generate()
    try:
        key.save(out_path)
    except KeyStoreError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    out.print(key.fingerprint, highlight=False)


@spec_app.command("sign")
def spec_sign(
    yaml_file: Annotated[Path, typer.Argument(help="The spec's YAML.")],
    key: Annotated[Path, typer.Option("--key", help="The signing key (from spec keygen).")],
    valid_for: Annotated[str, typer.Option("--valid-for", help="How long the signature holds, e.g. 30d.")] = "90d",
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="The signed file (default: <name>-v<version>.spec.json).")
    ] = None,
) -> None:
    """Sign a spec: the YAML is checked first, a bad spec is never signed."""
    from agent.errors import KeyStoreError
    from agent.keys import SigningKey
    from agent.specs import SpecError, parse_spec, sign_spec

    try:
        text = yaml_file.read_text("utf-8")
        spec = parse_spec(text, where=str(yaml_file))
        signing_key = SigningKey.load(key)
        data = sign_spec(text, signing_key, valid_for=parse_duration(valid_for))
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"{yaml_file}: {exc}") from None
    except (SpecError, KeyStoreError) as exc:
        raise typer.BadParameter(str(exc)) from None
    target = out_path or yaml_file.with_name(f"{spec.name}-v{spec.version}.spec.json")
    target.write_bytes(data)
    out.print(f"signed {spec.name} v{spec.version} with {signing_key.fingerprint} → {target}", highlight=False)


@spec_app.command("add")
def spec_add(
    signed_file: Annotated[Path, typer.Argument(help="A signed spec (.spec.json from spec sign).")],
    data_dir: DataDirOpt = Path("casefile-data"),
    db_url: DbUrlOpt = None,
) -> None:
    """Verify a signed spec (intact, not expired) and store it for live requests."""
    from agent.specs import SpecRefused, verify_spec

    try:
        data = signed_file.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"{signed_file}: {exc.strerror or exc}") from None
    try:
        signed = verify_spec(data, None, where=str(signed_file))
    except SpecRefused as exc:
        raise typer.BadParameter(str(exc)) from None
    store = _store(data_dir, db_url)
    try:
        target = f"{signed.spec.name} v{signed.spec.version}"
        try:
            rec = store.add_spec(signed, added_by="operator")
        except ValueError as exc:
            _audit_operator(store, "spec.add", target, "invalid_argument", str(exc))
            raise typer.BadParameter(str(exc)) from None
        _audit_operator(store, "spec.add", target, "ok", f"signer {rec.signer} sha256 {rec.sha256}")
    finally:
        store.close()
    out.print(
        f"stored {rec.name} v{rec.version} signed by {rec.signer}, expires {_iso_us(rec.expires_at_us)}",
        highlight=False,
    )


def _doc(rec: Any) -> dict[str, Any]:
    return {
        "name": rec.name,
        "version": rec.version,
        "signer": rec.signer,
        "sha256": rec.sha256,
        "description": rec.description,
        "signed_at": _iso_us(rec.signed_at_us),
        "expires_at": _iso_us(rec.expires_at_us),
        "added_at": _iso_us(rec.added_at_us),
    }


@spec_app.command("list")
def spec_list(data_dir: DataDirOpt = Path("casefile-data"), db_url: DbUrlOpt = None, as_json: JsonOpt = False) -> None:
    """The stored specs, newest version first."""
    store = _store(data_dir, db_url, read_only=True)
    try:
        docs = [_doc(r) for r in store.list_specs()]
    finally:
        store.close()
    if as_json:
        print(json.dumps({"specs": docs}, indent=1))
        return
    for d in docs:
        out.print(
            f"{shown(d['name']):20} v{d['version']:<4} {d['signer'][:23]}…  expires {d['expires_at']}  "
            f"{shown(d['description'])[:60]}",
            highlight=False,
        )
    if not docs:
        out.print("no specs stored (casefile-collector spec add FILE)")


@spec_app.command("show")
def spec_show(
    name: Annotated[str, typer.Argument(help="The spec's name.")],
    version: Annotated[int | None, typer.Option("--version", help="This version (default: the newest).")] = None,
    envelope: Annotated[bool, typer.Option("--envelope", help="Print the signed file as stored.")] = False,
    data_dir: DataDirOpt = Path("casefile-data"),
    db_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One stored spec: who signed it, until when, and its YAML."""
    from agent.specs import verify_spec
    from collector.storage import StoreError

    store = _store(data_dir, db_url, read_only=True)
    try:
        try:
            rec = store.get_spec(name, version)
        except StoreError as exc:
            raise typer.BadParameter(str(exc)) from None
    finally:
        store.close()
    if envelope:
        print(rec.envelope.decode("ascii"), end="")
        return
    signed = verify_spec(rec.envelope, None, now=dt.datetime.fromtimestamp(rec.signed_at_us / 1e6, dt.UTC))
    doc = {**_doc(rec), "yaml": signed.yaml_text}
    if as_json:
        print(json.dumps(doc, indent=1))
        return
    for key in ("name", "version", "signer", "sha256", "signed_at", "expires_at", "added_at"):
        out.print(f"{key:11} {shown(str(doc[key]))}", highlight=False)
    for line in signed.yaml_text.splitlines():
        out.print(shown(line), highlight=False)
