"""Collection specs in live snapshots: a real collector process, a real ``casefile agent run``.

Support signs the shipped PostgreSQL spec and stores it with ``casefile-collector spec
add``; an engineer names it (``snapshot --spec postgresql``); the agent runs it only when
its policy trusts the signer and lists the spec, and its history records name, version
and signer whatever the outcome.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest

from agent.keys import SigningKey
from agent.specs import sign_spec
from tests.e2e.test_live import BIN, Live, _start, wait_for
from tests.specs.amqp import broker_listening, refused_login

TEXT = (resources.files("agent.specs") / "builtin" / "postgresql.yaml").read_text("utf-8")


def _operator(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "casefile-collector"), "spec", *args, "--data-dir", str(live.collector.data)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def _policy(live: Live, **fields: Any) -> None:
    """Write the agent's policy and restart it (the daemon reads policy.json at start)."""
    path = live.agent.home / "policy.json"
    policy = json.loads(path.read_text())
    policy.update(fields)
    path.write_text(json.dumps(policy))
    live.agent.stop_all()
    live.agent.procs.clear()
    before = _connects(live)
    live.agent.start()
    wait_for("agent reconnected", lambda: _connects(live) > before, logs=live.agent.log.read_text)


def _connects(live: Live) -> int:
    with live.collector.store() as store:
        return len(store.list_audit(500, actor=live.agent.agent_id, action="channel.connect", outcome="ok"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    env = _start(tmp_path_factory.mktemp("spec-live"))
    try:
        yield env
    finally:
        env.agent.stop_all()
        env.collector.stop()


@pytest.fixture(scope="module")
def support(live: Live, tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    """Support's key; the PostgreSQL spec signed with it and stored on the collector."""
    key = SigningKey.generate()
    signed = tmp_path_factory.mktemp("support") / "postgresql.spec.json"
    signed.write_bytes(sign_spec(TEXT, key, valid_for=dt.timedelta(days=7)))
    res = _operator(live, "add", str(signed))
    assert res.returncode == 0, res.stderr
    listed = json.loads(_operator(live, "list", "--json").stdout)["specs"]
    assert [(s["name"], s["version"], s["signer"]) for s in listed] == [("postgresql", 1, key.fingerprint)]
    return key


def _last(live: Live, request_id: str) -> dict[str, Any]:
    return [e for e in live.agent.history() if e.get("request_id") == request_id][-1]


def test_a_spec_nobody_trusts_is_refused_and_recorded(live: Live, support: SigningKey) -> None:
    events = live.snapshot(spec="postgresql", timeout_s=60)
    assert events[-1].state == "denied"
    assert "no collection specs are trusted here" in events[-1].detail
    _policy(live, spec_signers=[SigningKey.generate().fingerprint], live_specs=["postgresql"])
    events = live.snapshot(spec="postgresql", timeout_s=60)
    assert events[-1].state == "denied" and "spec refused (untrusted-signer)" in events[-1].detail
    assert _last(live, events[-1].request_id)["outcome"] == "denied"


def test_a_trusted_spec_not_listed_for_live_is_refused(live: Live, support: SigningKey) -> None:
    _policy(live, spec_signers=[support.fingerprint], live_specs=["rabbitmq"])
    events = live.snapshot(spec="postgresql", timeout_s=60)
    assert events[-1].state == "denied" and "not in live_specs" in events[-1].detail
    entry = _last(live, events[-1].request_id)
    assert entry["spec"] == {
        "name": "postgresql",
        "version": 1,
        "signer": support.fingerprint,
        "sha256": entry["spec"]["sha256"],
    }


def test_an_unknown_spec_is_refused_by_the_collector(live: Live, support: SigningKey) -> None:
    import grpc

    with pytest.raises(grpc.RpcError) as info:
        live.snapshot(spec="nosuchspec", timeout_s=30)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert "no spec 'nosuchspec' is stored" in (info.value.details() or "")


@pytest.mark.skipif(not shutil.which("psql"), reason="psql is not installed here")
def test_an_allowed_spec_runs_live_against_the_real_postgresql(live: Live, support: SigningKey) -> None:
    missing = f"casefile_live_{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["psql", "-X", "-w", "-h", "127.0.0.1", "-U", "postgres", "-d", missing, "-c", "SELECT 1"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    _policy(
        live,
        spec_signers=[support.fingerprint],
        live_specs=[f"{support.fingerprint}/*"],
        allowed_scopes=["facts"],
        max_logs_window_s=3600,
    )
    c = live.collector
    doc = _snapshot_cli(live, "postgresql")
    assert doc["state"] == "done"
    # The spec's findings come back with the bundle, analysed on the collector.
    titles = [f["title"] for f in doc["findings"]["findings"] if f["code"] == "spec"]
    assert "PostgreSQL FATAL errors" in titles
    with c.store() as store:
        _rec, manifest_text = store.get_bundle_content(doc["bundle_id"])[:2]
    manifest = json.loads(manifest_text)
    members = {m["path"] for m in manifest["members"]}
    assert "logs/spec-postgresql-server.jsonl" in members
    assert "spec/postgresql/commands/version.txt" in members
    entry = [e for e in live.agent.history() if e.get("request_id") == manifest["request_id"]]
    assert [e["outcome"] for e in entry] == ["accepted", "done"]
    assert entry[0]["spec"]["name"] == "postgresql" and entry[0]["spec"]["signer"] == support.fingerprint
    assert entry[0]["scopes"] == ["facts", "spec:postgresql@1"]


def _snapshot_cli(live: Live, spec: str) -> dict[str, Any]:
    c = live.collector
    res = subprocess.run(
        [str(BIN / "casefile-collector"), "snapshot", live.agent.agent_id, "--spec", spec,
         "--collector", c.addr, "--token", live.tokens["engineer"], "--ca-fingerprint", c.fingerprint,
         "--reason", f"SR-22 {spec}", "--timeout", "90", "--json"],
        capture_output=True, text=True, timeout=150, env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


@pytest.mark.skipif(
    not (shutil.which("rabbitmqctl") and broker_listening()), reason="RabbitMQ is not installed or not listening here"
)
def test_an_allowed_spec_runs_live_against_the_real_rabbitmq(
    live: Live, support: SigningKey, tmp_path_factory: pytest.TempPathFactory
) -> None:
    text = (resources.files("agent.specs") / "builtin" / "rabbitmq.yaml").read_text("utf-8")
    signed = tmp_path_factory.mktemp("support-rabbitmq") / "rabbitmq.spec.json"
    signed.write_bytes(sign_spec(text, support, valid_for=dt.timedelta(days=7)))
    res = _operator(live, "add", str(signed))
    assert res.returncode == 0, res.stderr
    _policy(
        live,
        spec_signers=[support.fingerprint],
        live_specs=["rabbitmq"],
        allowed_scopes=["facts"],
        max_logs_window_s=3600,
    )
    refused_login()  # the broker logs it; the spec's auth-failures rule counts it
    doc = _snapshot_cli(live, "rabbitmq")
    assert doc["state"] == "done"
    titles = [f["title"] for f in doc["findings"]["findings"] if f["code"] == "spec"]
    assert "RabbitMQ refused logins" in titles
    with live.collector.store() as store:
        _rec, manifest_text = store.get_bundle_content(doc["bundle_id"])[:2]
    manifest = json.loads(manifest_text)
    members = {m["path"] for m in manifest["members"]}
    assert {"logs/spec-rabbitmq-node.jsonl", "spec/rabbitmq/commands/queues.txt"} <= members
    entry = [e for e in live.agent.history() if e.get("request_id") == manifest["request_id"]]
    assert [e["outcome"] for e in entry] == ["accepted", "done"]
    assert entry[0]["spec"]["name"] == "rabbitmq" and entry[0]["spec"]["version"] == 2
    assert entry[0]["scopes"] == ["facts", "spec:rabbitmq@2"]
