"""Bundles brought by hand: ``casefile-collector import`` files them through the checks
an upload gets, idempotently, and says when the signer is not enrolled."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import zstandard

from tests.e2e.test_cli import cli, served

__all__ = ["served"]  # the collector fixture, shared with test_cli


def _collect(home: Path, out: Path) -> Path:
    made = json.loads(
        cli("casefile", "collect", "--only", "host", "-o", str(out), "--home", str(home), "--json").stdout
    )
    return Path(made["bundle"]["path"])


def _tampered(bundle: Path, dest: Path, member_suffix: str) -> Path:
    """The same bundle with one byte of one member changed, members in the same order."""
    raw = bytearray(zstandard.ZstdDecompressor().decompressobj().decompress(bundle.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(member_suffix) and m.size > 20)
    at = member.offset_data + 10
    raw[at] = ord("X") if raw[at] != ord("X") else ord("Y")
    dest.write_bytes(zstandard.ZstdCompressor().compress(bytes(raw)))
    return dest


def test_import_by_hand_enrolled_unknown_tampered_and_again(served: dict[str, str], tmp_path: Path) -> None:
    s = served
    data_env = {"CASEFILE_DATA_DIR": s["data"]}
    cli("casefile", "agent", "enroll", "--collector", s["addr"], "--token", s["enroll"],
        "--ca-fingerprint", s["fp"], "--home", s["home"])  # fmt: skip
    enrolled = _collect(Path(s["home"]), tmp_path / "a")
    # Made under another home that never enrolled: a key the collector does not know.
    stranger = _collect(tmp_path / "other-home", tmp_path / "b")
    tampered = _tampered(stranger, tmp_path / "tampered.tar.zst", "facts.json")

    refused = cli("casefile-collector", "import", str(tampered), "--case", "SR-1234", env=data_env, check=False)
    assert refused.returncode == 4, refused.stderr
    assert "facts.json" in " ".join(refused.stderr.split()), refused.stderr

    first = cli("casefile-collector", "import", str(enrolled), str(stranger), "--case", "SR-1234", "--json",
                env=data_env)  # fmt: skip
    rows = json.loads(first.stdout)
    assert [r["state"] for r in rows] == ["stored", "stored"], rows
    assert rows[0]["signer"] == "enrolled" and rows[0]["agent_id"].startswith("ag_")
    assert rows[0]["agent_id"] != "ag_signer-not-enrolled"
    assert rows[1]["signer"] == "signer not enrolled" and rows[1]["agent_id"] == "ag_signer-not-enrolled"

    again = cli("casefile-collector", "import", str(enrolled), env=data_env)
    assert "already stored" in again.stdout, again.stdout
    # Now that the real bundle is stored, its tampered copy is still refused by the verifier.
    assert cli("casefile-collector", "import", str(tampered), env=data_env, check=False).returncode == 4

    admin = cli("casefile-collector", "token", "create", "--kind", "engineer", "--role", "admin", "-q",
                env=data_env).stdout.strip()  # fmt: skip
    env = {"CASEFILE_COLLECTOR": s["addr"], "CASEFILE_TOKEN": admin, "CASEFILE_CA_FINGERPRINT": s["fp"]}
    listed = json.loads(cli("casefile-collector", "bundles", "--case", "SR-1234", "--json", env=env).stdout)
    by_id = {b["bundleId"]: b for b in listed["bundles"]}
    assert set(by_id) == {rows[0]["bundle_id"], rows[1]["bundle_id"]}, by_id  # the tampered one never
    assert by_id[rows[1]["bundle_id"]]["agentId"] == "ag_signer-not-enrolled"
    table = cli("casefile-collector", "bundles", "--case", "SR-1234", env={**env, "COLUMNS": "200"}).stdout
    assert "signer not enrolled" in " ".join(table.split()), table
    shown = cli("casefile-collector", "show", rows[1]["bundle_id"], env=env).stdout
    assert "signer not enrolled" in " ".join(shown.split()), shown
    enrolled_shown = cli("casefile-collector", "show", rows[0]["bundle_id"], env=env).stdout
    assert "signer not enrolled" not in enrolled_shown

    audit = json.loads(cli("casefile-collector", "audit", "--action", "bundle.import", "--json", env=env).stdout)
    assert {e["outcome"] for e in audit} == {"ok", "invalid_argument"}, audit
    assert all(e["actor"] == "operator" for e in audit), audit
