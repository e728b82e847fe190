"""Bundles sealed for the vendor (``casefile collect --encrypt-to``), end to end through a
real collector on loopback: the collector's recipient, a sealed upload and a sealed
import opened and verified like any bundle, and what cannot be opened refused with
nothing stored: another recipient, a tampered file, a truncated one."""

from __future__ import annotations

import json
from pathlib import Path

import pyrage

from agent.keys import SigningKey
from tests.collector.conftest import small_bundle
from tests.e2e.test_cli import cli, served

__all__ = ["served"]  # the collector fixture, shared with test_cli


def _recipient(data: str) -> str:
    line = cli("casefile-collector", "recipient", env={"CASEFILE_DATA_DIR": data}).stdout.strip()
    assert line.startswith("age1") and len(line) == 62, line
    return line


def _sealed(s: dict[str, str], out: Path, recipient: str, *extra: str, home: str = "") -> dict[str, object]:
    argv = ["collect", "--case", "SR-9", "--only", "host", "-o", str(out), "--home", home or s["home"],
            "--json", "--encrypt-to", recipient, *extra]  # fmt: skip
    made: dict[str, object] = json.loads(cli("casefile", *argv).stdout)
    return made


def _same_id_other_bytes(s: dict[str, str], out: Path, bundle_id: str, recipient: str) -> Path:
    """A real bundle under ``bundle_id`` with other contents (signed by another key), sealed."""
    key = SigningKey.generate()
    other = small_bundle(out, key, case_id="SR-9", payload=b"not the bundle the collector holds", bundle_id=bundle_id)
    sealed = out / f"casefile-web-1-SR-9-20261207T000000Z-{bundle_id}.tar.zst.age"  # the id in its name
    sealed.write_bytes(pyrage.encrypt(other.path.read_bytes(), [pyrage.x25519.Recipient.from_str(recipient)]))
    other.path.unlink()
    return sealed


def _case_token(data: str) -> str:
    return cli("casefile-collector", "token", "create", "--kind", "case", "--case", "SR-9", "--uses", "10", "-q",
               env={"CASEFILE_DATA_DIR": data}).stdout.strip()  # fmt: skip


def _stored(s: dict[str, str]) -> set[str]:
    env = {"CASEFILE_COLLECTOR": s["addr"], "CASEFILE_TOKEN": s["eng"], "CASEFILE_CA_FINGERPRINT": s["fp"]}
    listed = json.loads(cli("casefile-collector", "bundles", "--case", "SR-9", "--json", env=env).stdout)
    return {b["bundleId"] for b in listed.get("bundles", [])}


def _no_leftovers(s: dict[str, str]) -> None:
    staging = Path(s["data"]) / "staging"
    assert not list(staging.glob("*.opened")), list(staging.iterdir())


def test_sealed_upload_and_import_round_trip(served: dict[str, str], tmp_path: Path) -> None:
    s = served
    recipient = _recipient(s["data"])
    assert _recipient(s["data"]) == recipient  # made once, the same afterwards
    token = _case_token(s["data"])
    made = _sealed(s, tmp_path / "up", recipient, "--upload", s["addr"], "--token", token,
                   "--ca-fingerprint", s["fp"], "--yes")  # fmt: skip
    bundle = made["bundle"]
    assert isinstance(bundle, dict)
    sealed = Path(bundle["path"])
    assert sealed.name.endswith(f"-{bundle['bundle_id']}.tar.zst.age"), sealed
    assert sealed.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert [p.name for p in (tmp_path / "up").iterdir()] == [sealed.name]  # the plain bundle is gone
    upload = made["upload"]
    assert isinstance(upload, dict) and upload["agent_id"], made

    # What the collector stores is the signed bundle that was inside, byte for byte verifiable.
    env = {"CASEFILE_COLLECTOR": s["addr"], "CASEFILE_TOKEN": s["eng"], "CASEFILE_CA_FINGERPRINT": s["fp"]}
    opened = tmp_path / "opened.tar.zst"
    cli("casefile-collector", "download", str(bundle["bundle_id"]), "-o", str(opened), env=env)
    checked = json.loads(cli("casefile", "verify", str(opened), "--json").stdout)
    assert checked["ok"] and checked["bundle_id"] == bundle["bundle_id"] and checked["case_id"] == "SR-9"
    assert checked["key_fingerprint"] == bundle["key_fingerprint"]

    # The customer's verify says what the sealed file is, with its own exit code.
    res = cli("casefile", "verify", str(sealed), check=False)
    assert res.returncode == 5, res.stderr
    said = " ".join(res.stderr.split())
    assert "age-encrypted" in said and "only the holder of the recipient's identity can open it" in said, said
    doc = json.loads(cli("casefile", "verify", str(sealed), "--json", check=False).stdout)
    assert doc["sealed"] is True and doc["recipient_kinds"] == ["X25519"] and doc["bundle_id"] == bundle["bundle_id"]

    # Sent again by `casefile upload` (its id is in its name), twice: the collector opens it,
    # finds the bundle it already holds and answers with its receipt; nothing is stored twice.
    for _ in range(2):
        again = cli("casefile", "upload", str(sealed), "--to", s["addr"], "--token", token,
                    "--ca-fingerprint", s["fp"], "--home", s["home"], check=False)  # fmt: skip
        said = " ".join(again.stdout.split())
        assert again.returncode == 0, again.stderr
        assert f"bundle {bundle['bundle_id']}, sha256 {upload['sha256'][:16]}" in said, said
    # Brought by hand as well: the same bundle, already stored.
    data_env = {"CASEFILE_DATA_DIR": s["data"]}
    rows = json.loads(cli("casefile-collector", "import", str(sealed), "--json", env=data_env).stdout)
    assert [(r["bundle_id"], r["state"]) for r in rows] == [(bundle["bundle_id"], "already stored")], rows
    # Another bundle under the same id, sealed: it opens, but to other bytes: refused, nothing changed.
    impostor = _same_id_other_bytes(s, tmp_path / "impostor", str(bundle["bundle_id"]), recipient)
    for code, sent in (
        (3, cli("casefile", "upload", str(impostor), "--to", s["addr"], "--token", token, "--ca-fingerprint", s["fp"],
                "--home", s["home"], check=False)),
        (4, cli("casefile-collector", "import", str(impostor), env=data_env, check=False)),
    ):  # fmt: skip
        said = " ".join(sent.stderr.split())
        assert sent.returncode == code and "refusing different bytes" in said, (sent.returncode, said)
    assert _stored(s) == {bundle["bundle_id"]}
    cli("casefile-collector", "download", str(bundle["bundle_id"]), "-o", str(tmp_path / "after.tar.zst"), env=env)
    assert (tmp_path / "after.tar.zst").read_bytes() == opened.read_bytes()

    # Carried by hand from a machine the collector never saw: import opens it the same
    # way, files it as "signer not enrolled"; a second import is idempotent.
    carried = _sealed(s, tmp_path / "hand", recipient, home=str(tmp_path / "elsewhere"))["bundle"]
    assert isinstance(carried, dict)
    rows = json.loads(cli("casefile-collector", "import", str(carried["path"]), "--json", env=data_env).stdout)
    assert rows == [{"bundle_id": carried["bundle_id"], "state": "stored", "agent_id": rows[0]["agent_id"],
                     "signer": "signer not enrolled"}], rows  # fmt: skip
    rows = json.loads(cli("casefile-collector", "import", str(carried["path"]), "--json", env=data_env).stdout)
    assert rows[0]["state"] == "already stored", rows
    assert _stored(s) == {bundle["bundle_id"], carried["bundle_id"]}
    _no_leftovers(s)
    # Making the identity was audited (once); the secret appears in no listing.
    admin = cli("casefile-collector", "token", "create", "--kind", "engineer", "--role", "admin", "-q",
                env=data_env).stdout.strip()  # fmt: skip
    audit = cli("casefile-collector", "audit", "--action", "recipient.create", "--json",
                env={**env, "CASEFILE_TOKEN": admin}).stdout  # fmt: skip
    rows = json.loads(audit)
    assert [(r["actor"], r["target"]) for r in rows] == [("operator", recipient)], rows
    secret = (Path(s["data"]) / "recipient" / "age-identity.txt").read_text().splitlines()[-1]
    assert secret.startswith("AGE-SECRET-KEY-1") and secret not in audit


def test_wrong_recipient_tampered_and_truncated_are_refused(served: dict[str, str], tmp_path: Path) -> None:
    s = served
    ours = _recipient(s["data"])
    theirs = _recipient(str(tmp_path / "another-collector"))
    token = _case_token(s["data"])
    data_env = {"CASEFILE_DATA_DIR": s["data"]}

    # Sealed to another collector: refused on upload and on import, and said so.
    other = _sealed(s, tmp_path / "other", theirs)["bundle"]
    assert isinstance(other, dict)
    sent = cli("casefile", "upload", str(other["path"]), "--to", s["addr"], "--token", token,
               "--ca-fingerprint", s["fp"], "--home", s["home"], check=False)  # fmt: skip
    assert sent.returncode != 0
    assert "encrypted to another recipient" in " ".join(sent.stderr.split()), sent.stderr
    imported = cli("casefile-collector", "import", str(other["path"]), env=data_env, check=False)
    assert imported.returncode == 4
    assert "encrypted to another recipient" in " ".join(imported.stderr.split()), imported.stderr

    # Sealed to us, then one payload byte changed, or cut short: it does not open.
    good = _sealed(s, tmp_path / "good", ours)["bundle"]
    assert isinstance(good, dict)
    raw = Path(str(good["path"])).read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 2 + 40] ^= 0x01
    tampered = tmp_path / "t" / Path(str(good["path"])).name
    tampered.parent.mkdir()
    tampered.write_bytes(bytes(flipped))
    truncated = tmp_path / "cut" / Path(str(good["path"])).name
    truncated.parent.mkdir()
    truncated.write_bytes(raw[: len(raw) // 2])
    header_only = tmp_path / "header" / Path(str(good["path"])).name
    header_only.parent.mkdir()
    header_only.write_bytes(raw[:60])
    for bad in (tampered, truncated, header_only):
        res = cli("casefile-collector", "import", str(bad), env=data_env, check=False)
        assert res.returncode == 4, (bad, res.stdout)
        said = " ".join(res.stderr.split())
        assert "sealed (age)" in said and ("tampered" in said or "cut short" in said), said
        up = cli("casefile", "upload", str(bad), "--to", s["addr"], "--token", token, "--ca-fingerprint", s["fp"],
                 "--home", s["home"], check=False)  # fmt: skip
        assert up.returncode != 0 and "sealed" in " ".join(up.stderr.split()), up.stderr
    assert _stored(s) == set()  # nothing of any of them
    _no_leftovers(s)
    # The intact file still opens.
    assert cli("casefile-collector", "import", str(good["path"]), env=data_env).returncode == 0
    assert _stored(s) == {good["bundle_id"]}
