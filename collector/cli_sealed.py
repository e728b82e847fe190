"""``casefile-collector recipient``: the public age recipient customers seal bundles to.

``casefile collect --encrypt-to <recipient>`` encrypts a bundle so that only this
collector opens it (collector.services.sealed). The first call makes the identity in
the data folder (owner-only) and audits that; later calls print the same recipient.
The private half is never printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from collector.cli_common import DataDirOpt, DbUrlOpt, JsonOpt, _audit_operator, _store, app, err

__all__ = ["recipient"]


@app.command("recipient")
def recipient(
    data_dir: DataDirOpt = Path("casefile-data"),
    db_url: DbUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print this collector's age recipient (age1…), for `casefile collect --encrypt-to`.

    Made on first use: its private half stays in <data dir>/recipient/ (owner-only)."""
    from collector.services.sealed import CollectorRecipient

    keys = CollectorRecipient(data_dir)
    existed = keys.path.exists()
    # The data folder (owner-only, made by the store) before the identity in it.
    store = None if existed else _store(data_dir, db_url)
    try:
        public = keys.recipient(create=True)
        if store is not None and public is not None:
            _audit_operator(store, "recipient.create", public, "ok", f"age identity made in {keys.folder}")
    except ValueError as exc:
        err.print(f"casefile-collector: {exc}", markup=False, highlight=False)
        raise typer.Exit(4) from None
    finally:
        if store is not None:
            store.close()
    if not existed:
        err.print(f"made a new age identity in {keys.folder} (keep it: it alone opens sealed bundles)")
    if as_json:
        print(json.dumps({"recipient": public, "identity_file": str(keys.path), "created": not existed}))
    else:
        print(public)
