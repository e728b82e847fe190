"""``casefile-collector spec keygen|sign|add|list|show`` on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from importlib import resources
from pathlib import Path

from collector.storage import Store

BIN = Path(sys.executable).parent
TEXT = (resources.files("agent.specs") / "builtin" / "rabbitmq.yaml").read_text("utf-8")


def spec_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(BIN / "casefile-collector"), "spec", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{args}: {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def test_sign_add_list_show_and_refusals(tmp_path: Path, store_url: str) -> None:
    db = ("--data-dir", str(tmp_path / "data"), "--db-url", store_url)
    key = tmp_path / "support.key"
    fingerprint = spec_cmd("keygen", "-o", str(key)).stdout.strip()
    assert fingerprint.startswith("sha256:") and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert spec_cmd("keygen", "-o", str(key), check=False).returncode == 2  # never over an existing key
    source = tmp_path / "rabbitmq.yaml"
    source.write_text(TEXT)
    spec_cmd("sign", str(source), "--key", str(key), "--valid-for", "30d")
    signed = tmp_path / "rabbitmq-v2.spec.json"
    assert signed.exists()
    spec_cmd("add", str(signed), *db)
    spec_cmd("add", str(signed), *db)  # the same envelope again: nothing changes
    listed = json.loads(spec_cmd("list", "--json", *db).stdout)["specs"]
    assert [(s["name"], s["version"], s["signer"]) for s in listed] == [("rabbitmq", 2, fingerprint)]
    shown = json.loads(spec_cmd("show", "rabbitmq", "--json", *db).stdout)
    assert shown["yaml"] == TEXT and shown["signer"] == fingerprint
    assert spec_cmd("show", "rabbitmq", "--envelope", *db).stdout.encode() == signed.read_bytes()

    # Another signature of the same name and version is refused (raise the version).
    again = tmp_path / "again.spec.json"
    spec_cmd("sign", str(source), "--key", str(key), "-o", str(again))
    refused = spec_cmd("add", str(again), *db, check=False)
    assert refused.returncode == 2 and "already stored" in " ".join(refused.stderr.split())
    # A tampered file and plain YAML are refused with their reasons; a bad spec is never signed.
    tampered = tmp_path / "tampered.spec.json"
    tampered.write_text(signed.read_text().replace("rabbitmqctl", "rabbitmqctX"))
    assert "spec refused (tampered)" in " ".join(spec_cmd("add", str(tampered), *db, check=False).stderr.split())
    assert "spec refused (unsigned)" in " ".join(spec_cmd("add", str(source), *db, check=False).stderr.split())
    bad = tmp_path / "bad.yaml"
    bad.write_text(TEXT.replace("timeout_s: 15", "timeout_s: 999", 1))
    res = spec_cmd("sign", str(bad), "--key", str(key), check=False)
    assert res.returncode == 2 and "commands[0].timeout_s" in " ".join(res.stderr.split())
    assert "no spec 'nosuch'" in " ".join(spec_cmd("show", "nosuch", *db, check=False).stderr.split())

    with Store.open(store_url) as store:
        rows = store.list_audit(20, action="spec.add")
    assert sorted(r.outcome for r in rows) == ["invalid_argument", "ok", "ok"]
    assert all(r.actor == "operator" for r in rows)
