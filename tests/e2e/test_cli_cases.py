"""Cases on a normal day: one machine serving a second case, and a bundle carried to the
collector by someone else (a technician's laptop). Real processes, a real collector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.test_cli import cli, served

__all__ = ["served"]  # the collector fixture, shared with test_cli


def _case_token(s: dict[str, str], case: str) -> str:
    env = {"CASEFILE_DATA_DIR": s["data"]}
    return cli("casefile-collector", "token", "create", "--kind", "case", "--case", case, "-q", env=env).stdout.strip()


def _engineer(s: dict[str, str]) -> dict[str, str]:
    return {"CASEFILE_COLLECTOR": s["addr"], "CASEFILE_TOKEN": s["eng"], "CASEFILE_CA_FINGERPRINT": s["fp"]}


def _listed(s: dict[str, str], case: str) -> list[dict[str, Any]]:
    res = cli("casefile-collector", "bundles", "--case", case, "--json", env=_engineer(s))
    return list(json.loads(res.stdout).get("bundles", []))


def test_a_second_case_from_the_same_machine(served: dict[str, str]) -> None:
    """The machine that sent SR-1's bundle sends SR-2's with SR-2's token; each bundle is
    filed under its own case, both from the one identity of the machine's key."""
    s = served
    out = Path(s["tmp"]) / "out"
    common = ("casefile", "collect", "--only", "host", "-o", str(out), "--upload", s["addr"],
              "--ca-fingerprint", s["fp"], "--home", s["home"], "--yes", "--json")  # fmt: skip
    first = json.loads(cli(*common, "--case", "SR-1", "--token", _case_token(s, "SR-1")).stdout)
    sr2 = _case_token(s, "SR-2")
    second = json.loads(cli(*common, "--case", "SR-2", "--token", sr2).stdout)
    assert first["upload"]["agent_id"] == second["upload"]["agent_id"]
    assert [b["bundleId"] for b in _listed(s, "SR-1")] == [first["bundle"]["bundle_id"]]
    assert [b["bundleId"] for b in _listed(s, "SR-2")] == [second["bundle"]["bundle_id"]]
    # Each upload still needs a token for its own case: a new SR-1 bundle is not SR-2's.
    alone = ("casefile", "collect", "--only", "host", "-o", str(out), "--case", "SR-1", "--home", s["home"], "--json")
    later = json.loads(cli(*alone).stdout)
    again = cli("casefile", "upload", later["bundle"]["path"], "--to", s["addr"], "--token", sr2,
                "--ca-fingerprint", s["fp"], "--home", s["home"], check=False)  # fmt: skip
    assert again.returncode == 3 and "is not the token's case" in " ".join(again.stderr.split()), again.stderr


def test_a_technician_carries_a_customers_bundle_in(served: dict[str, str]) -> None:
    """Made under the customer's home, sent from the technician's with the case token: it
    is verified against its signer, listed under the case with that signer as its origin,
    and nothing is written to the technician's home."""
    s = served
    tmp = Path(s["tmp"])
    at_customer = ("casefile", "collect", "--case", "SR-9", "--only", "host", "-o", str(tmp / "usb"),
                   "--home", str(tmp / "customer"), "--json")  # fmt: skip
    made = json.loads(cli(*at_customer).stdout)
    bundle, signer = made["bundle"]["path"], made["bundle"]["key_fingerprint"]
    laptop = tmp / "technician"
    token = _case_token(s, "SR-9")
    send = ("casefile", "upload", bundle, "--to", s["addr"], "--token", token, "--ca-fingerprint", s["fp"],
            "--home", str(laptop))  # fmt: skip
    sent = cli(*send)
    assert "Uploaded" in sent.stdout and f"signed by {signer}" in " ".join(sent.stdout.split()), sent.stdout
    assert not laptop.exists()  # no key, no folder: the upload left nothing behind
    assert "Uploaded" in cli(*send).stdout  # the same uploader again: the stored bundle's receipt

    (listed,) = _listed(s, "SR-9")
    assert listed["bundleId"] == made["bundle"]["bundle_id"]
    assert listed["originFingerprint"] == signer and listed["keyFingerprint"] != signer
    shown = " ".join(cli("casefile-collector", "show", listed["bundleId"], env=_engineer(s)).stdout.split())
    assert f"signed by key {signer}" in shown and f"carried in by agent {listed['agentId']}" in shown, shown
    table = cli("casefile-collector", "bundles", "--case", "SR-9", env={**_engineer(s), "COLUMNS": "200"}).stdout
    assert "(carried)" in table, table

    # An enrolled agent still sends only what its own key signed.
    cli("casefile", "agent", "enroll", "--collector", s["addr"], "--token", s["enroll"],
        "--ca-fingerprint", s["fp"], "--home", str(laptop))  # fmt: skip
    refused = cli("casefile", "upload", bundle, "--home", str(laptop), check=False)
    assert refused.returncode == 1 and "verification failed" in refused.stderr, refused.stderr


def test_hosts_lists_enrolled_agents_without_bundles_and_skipped_collectors_apart(served: dict[str, str]) -> None:
    s = served
    cli("casefile", "agent", "enroll", "--collector", s["addr"], "--token", s["enroll"],
        "--ca-fingerprint", s["fp"], "--home", s["home"])  # fmt: skip
    agent_id = json.loads((Path(s["home"]) / "enrollment.json").read_text())["agent_id"]
    listing = json.loads(cli("casefile-collector", "hosts", "--json", env=_engineer(s)).stdout)
    assert listing.get("hosts", []) == []
    (waiting,) = listing["agentsWithoutBundles"]
    assert waiting["agentId"] == agent_id and not waiting.get("connected") and "enrolledAt" in waiting
    table = " ".join(cli("casefile-collector", "hosts", env={**_engineer(s), "COLUMNS": "200"}).stdout.split())
    assert "Agents without bundles yet" in table and agent_id in table and "never" in table, table

    # A bundle of one collector: the others were left out (SKIPPED), none of them failed.
    cli("casefile", "collect", "--only", "host", "-o", str(Path(s["tmp"]) / "out"), "--home", s["home"],
        "--upload", s["addr"], "--yes", "--json")  # fmt: skip
    after = json.loads(cli("casefile-collector", "hosts", "--json", env=_engineer(s)).stdout)
    assert "agentsWithoutBundles" not in after and len(after["hosts"]) == 1
    (b,) = json.loads(cli("casefile-collector", "bundles", "--json", env=_engineer(s)).stdout)["bundles"]
    assert b["collectorsOk"] == 1 and b["collectorsSkipped"] > 0 and "collectorsFailed" not in b, b
    table = cli("casefile-collector", "bundles", env={**_engineer(s), "COLUMNS": "200"}).stdout
    assert f"1 ok, {b['collectorsSkipped']} skipped" in table and "failed" not in table, table
