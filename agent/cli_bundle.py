"""``casefile unmask``, ``verify`` and ``upload``: what is done with a bundle once written."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from agent.cli_common import (
    CaFileOpt,
    CaFingerprintOpt,
    HomeOpt,
    InsecureOpt,
    app,
    err,
    out,
    upload_to_collector,
)
from agent.errors import VerificationError
from agent.state import AgentHome
from agent.version import __version__


@app.command()
def unmask(
    text: Annotated[str, typer.Argument(help="Text with tokens, or a file holding it ('-' for stdin).")],
    home: HomeOpt = None,
) -> None:
    """Put the real values back for tokens made on THIS machine (the map never leaves it)."""
    from agent.redact import load_mapping, unmask_text

    state = AgentHome(home)
    source = Path(text)
    if text == "-":
        data = sys.stdin.read()
    elif source.is_file():
        data = source.read_text("utf-8", errors="surrogateescape")
    else:
        data = text
    restored, n, unknown = unmask_text(data, load_mapping(state.root))
    sys.stdout.write(restored if restored.endswith("\n") else restored + "\n")
    if unknown:
        err.print(f"{unknown} token(s) not in this machine's map (made elsewhere or with another key)")
    if not n and not unknown:
        err.print("no tokens found")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="The .tar.zst bundle to check.")],
    key: Annotated[
        Path | None, typer.Option("--key", help="Expected signer public key (PEM, base64 or hex file).")
    ] = None,
    fingerprint: Annotated[
        str | None, typer.Option("--fingerprint", help="Expected signer key fingerprint sha256:<hex>.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a bundle: signature, every member's hash, no missing/extra members, no unsafe paths."""
    from agent.bundle import verify_bundle
    from agent.keys import load_public_key
    from agent.sealed import refuse_sealed

    refuse_sealed(bundle, as_json)  # exit 5: says what it is and who can open it

    expected = load_public_key(key.read_bytes()) if key else None
    try:
        vb = verify_bundle(bundle, expected_key=expected, expected_fingerprint=fingerprint)
    except VerificationError as exc:
        if as_json:  # a script asked for JSON: it gets JSON on failure too (and exit 1)
            print(json.dumps({"ok": False, "bundle": str(bundle), "error": str(exc)}, indent=1))
        raise
    m = vb.manifest
    result = {
        "ok": True,
        "casefile_version": __version__,
        "bundle_id": m.bundle_id,
        "hostname": m.hostname,
        "case_id": m.case_id,
        "created_at": m.created_at,
        "members": len(vb.members),
        "key_fingerprint": vb.public_key.fingerprint,
        "key_pinned": vb.key_pinned,
    }
    if as_json:
        print(json.dumps(result, indent=1))
        return
    out.print(f"[green]OK[/] {bundle}: {len(vb.members)} members match the signed manifest")
    who = "the expected key" if vb.key_pinned else "the key embedded in the manifest"
    out.print(f"signed by {vb.public_key.fingerprint} ({who})")
    if not vb.key_pinned:
        out.print("[yellow]note[/]: pass --fingerprint or --key to check WHO signed it, not only that it is intact")


@app.command("upload")
def upload_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle written by 'casefile collect'.")],
    to: Annotated[
        str | None, typer.Option("--to", "--upload", help="Collector HOST:PORT (default: the enrolled one).")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="CASEFILE_TOKEN", help="Case token from support.")
    ] = None,
    ca_fingerprint: CaFingerprintOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    home: HomeOpt = None,
) -> None:
    """Send an existing bundle; resumes where an interrupted upload stopped.

    With a case token it may be any bundle of that case, made on this machine or
    carried from another (a technician's laptop): it is verified against the key that
    signed it, and the collector records that key as its origin. Without a token an
    enrolled agent sends only bundles its own key signed. Nothing is written to the
    home: with no key there, a key derived from the token proves the upload.
    """
    from agent.bundle import verify_bundle
    from agent.courier import courier_key
    from agent.sealed import sealed_upload_id

    state = AgentHome(home)
    own = state.existing_key()
    sealed_id = sealed_upload_id(bundle)  # sealed (age): the collector opens and verifies it
    if token:
        vb = None if sealed_id else verify_bundle(bundle)
        key = own or courier_key(token)
    else:
        if own is None or state.enrollment() is None:
            raise typer.BadParameter("uploading needs --token (a case token from support) or an enrolled agent")
        vb = None if sealed_id else verify_bundle(bundle, expected_key=own.public)
        key = own
    receipt = upload_to_collector(
        bundle, vb.bundle_id if vb else str(sealed_id), state, to, token, ca_fingerprint, ca_file, insecure,
        key=key, show_progress=True,
    )  # fmt: skip
    out.print(f"[green]Uploaded[/] {bundle.name}: bundle {receipt.bundle_id}, sha256 {receipt.sha256[:16]}…")
    if vb is not None and vb.public_key.fingerprint != key.fingerprint:
        out.print(f"signed by {vb.public_key.fingerprint}; delivered by key {key.fingerprint}")
