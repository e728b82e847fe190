"""Hunts end to end: a real collector, real ``casefile agent run`` daemons with labels.

Four agents carry ``role=web``: two run from the start, one runs with a policy that
denies ``facts``, one is offline when the hunt is made and connects later. A fifth
(``role=db``) must never be asked. Waits are bounded polls of the hunt's status.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.errors import EnrollmentError
from agent.state import AgentHome, Enrollment
from agent.transport import enroll
from collector.hunts import HUNTS_PER_HOUR
from protos import collector_pb2, collector_pb2_grpc
from tests.e2e.test_live import BIN, Agent, Collector, _tokens, connects, free_port, wait_for

pytestmark = pytest.mark.slow


def _enroll(c: Collector, home: Path, hostname: str, labels: tuple[str, ...]) -> Agent:
    with c.store() as store:
        token, _ = store.create_token("enroll", label="test", ttl=dt.timedelta(hours=1), max_uses=1)
    state = AgentHome(home)
    key = state.key()
    with c.channel() as ch:
        resp = enroll(ch, token=token, key=key, hostname=hostname, agent_version="test", labels=labels)
    state.save_enrollment(Enrollment(resp.agent_id, c.addr, c.fingerprint, key.fingerprint))
    return Agent(home=home, agent_id=resp.agent_id, log=home.parent / f"agent-{resp.agent_id}.log")


@dataclass
class Fleet:
    collector: Collector
    agents: dict[str, Agent]
    tokens: dict[str, str]

    def cli(self, *args: str, role: str = "engineer") -> subprocess.CompletedProcess[str]:
        c = self.collector
        return subprocess.run(
            [str(BIN / "casefile-collector"), *args, "--collector", c.addr, "--token", self.tokens[role],
             "--ca-fingerprint", c.fingerprint],
            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
        )

    def status(self, hunt_id: str) -> dict[str, Any]:
        res = self.cli("hunt", "status", hunt_id, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        doc: dict[str, Any] = json.loads(res.stdout)
        return doc

    def states(self, hunt_id: str) -> dict[str, str]:
        return {h["hostname"]: h["state"] for h in self.status(hunt_id)["hosts"]}

    def start(self, name: str) -> None:
        agent = self.agents[name]
        before = connects(self.collector, agent.agent_id)
        agent.start()
        wait_for(
            f"{name} connected", lambda: connects(self.collector, agent.agent_id) > before, logs=agent.log.read_text
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("hunts")
    c = Collector(data=tmp / "data", port=free_port(), log=tmp / "collector.log")
    c.start()
    agents = {
        "web-1": _enroll(c, tmp / "web-1", "web-1", ("role=web", "site=paris")),
        "web-2": _enroll(c, tmp / "web-2", "web-2", ("role=web", "site=lyon")),
        "web-3": _enroll(c, tmp / "web-3", "web-3", ("role=web", "site=paris")),
        "web-4": _enroll(c, tmp / "web-4", "web-4", ("role=web",)),
        "db-1": _enroll(c, tmp / "db-1", "db-1", ("role=db", "site=paris")),
    }
    # web-3's owner allows no facts: its answer must be "denied", the others unaffected.
    (tmp / "web-3" / "policy.json").write_text(json.dumps({"version": 1, "allowed_scopes": ["fragmentation"]}))
    env = Fleet(c, agents, _tokens(c))
    try:
        for name in ("web-1", "web-2", "web-3", "db-1"):
            env.start(name)
        yield env
    finally:
        for agent in agents.values():
            agent.stop_all()
        c.stop()


def test_hunt_reaches_online_agents_now_and_the_offline_one_when_it_connects(fleet: Fleet) -> None:
    res = fleet.cli("hunt", "create", "--label", "role=web", "--host", "web-*", "--case", "SR-1234",
                    "--reason", "slow checkout", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    created = json.loads(res.stdout)
    hunt_id = created["hunt_id"]
    assert created["case_id"] == "SR-1234" and created["selector"] == "role=web host=web-*"
    assert sorted(h["hostname"] for h in created["hosts"]) == ["web-1", "web-2", "web-3", "web-4"]  # not db-1
    assert {h["hostname"]: h["state"] for h in created["hosts"]}["web-4"] == "offline"

    def settled() -> dict[str, str] | None:
        s = fleet.states(hunt_id)
        return s if s["web-1"] == s["web-2"] == "done" and s["web-3"] == "denied" else None

    states = wait_for("online agents answered", settled, timeout=240)
    assert states["web-4"] == "offline"
    fleet.start("web-4")
    wait_for("web-4 answered on reconnect", lambda: fleet.states(hunt_id)["web-4"] == "done", timeout=240)
    doc = fleet.status(hunt_id)
    assert doc["counts"] == {"done": 3, "denied": 1}
    web3 = next(h for h in doc["hosts"] if h["hostname"] == "web-3")
    assert web3["detail"].startswith("denied by policy: scope 'facts' is not allowed"), web3

    text = fleet.cli("hunt", "status", hunt_id)
    assert text.returncode == 0 and "4 hosts: 3 done, 1 denied" in text.stdout, text.stdout

    res = fleet.cli("hunt", "results", hunt_id, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads(res.stdout)
    assert sorted(b["host"] for b in results["bundles"]) == ["web-1", "web-2", "web-4"]
    with fleet.collector.store() as store:
        for b in results["bundles"]:
            rec = store.get_bundle(b["bundle_id"])
            assert rec.kind == "live" and rec.agent_id == fleet.agents[b["host"]].agent_id
    cpu = next(m for m in results["metrics"] if m["metric"] == "cpu_percent")
    assert cpu["hosts"] == 3 and cpu["median"] is not None
    # Same machine under the same load: whatever stands out, it is one of the three.
    assert all(o["host"] in ("web-1", "web-2", "web-4") for m in results["metrics"] for o in m["outliers"])
    text = fleet.cli("hunt", "results", hunt_id)
    assert text.returncode == 0 and "3 bundles compared" in text.stdout and "cpu_percent" in text.stdout

    # Audited as one hunt plus one row per host; the live requests are not audited again.
    with fleet.collector.store() as store:
        created_rows = store.list_audit(100, action="hunt.create")
        per_host = [r for r in store.list_audit(100, action="hunt.request") if hunt_id in r.detail]
        snapshots = store.list_audit(100, action="live.request_snapshot")
    assert [r.target for r in created_rows] == ["SR-1234"] and created_rows[0].outcome == "ok"
    webs = ("web-1", "web-2", "web-3", "web-4")
    assert sorted(r.target for r in per_host) == sorted(fleet.agents[h].agent_id for h in webs)
    assert snapshots == []


def test_a_queued_request_expires_with_its_hunt(fleet: Fleet, tmp_path: Path) -> None:
    away = _enroll(fleet.collector, tmp_path / "web-9", "web-9", ("role=edge",))
    res = fleet.cli("hunt", "create", "--label", "role=edge", "--case", "SR-9", "--expires", "1s", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    hunt_id = json.loads(res.stdout)["hunt_id"]
    time.sleep(1.2)  # the hunt's own expiry, not a wait for something to happen
    assert fleet.states(hunt_id) == {"web-9": "expired"}
    with fleet.collector.store() as store:
        (rec,) = store.hunt_live_requests(hunt_id)
    assert rec.state == "expired" and rec.agent_id == away.agent_id  # written: never delivered later


def test_bad_selectors_and_roles_are_refused(fleet: Fleet) -> None:
    res = fleet.cli("hunt", "create", "--case", "SR-1")
    assert res.returncode == 2 and "--label key=value or --host" in res.stderr, res.stderr
    res = fleet.cli("hunt", "create", "--label", "Role=web", "--case", "SR-1")
    assert res.returncode == 2 and "label key 'Role'" in res.stderr, res.stderr
    res = fleet.cli("hunt", "create", "--label", "role=nothing-has-it", "--case", "SR-1")
    assert res.returncode == 3 and "no enrolled agent matches role=nothing-has-it" in res.stderr, res.stderr
    res = fleet.cli("hunt", "create", "--label", "role=web", "--case", "SR-1", role="viewer")
    assert res.returncode == 3 and "role does not allow" in res.stderr, res.stderr
    res = fleet.cli("hunt", "status", "hu_not-an-id")
    assert res.returncode == 2 and "is not a hunt id" in res.stderr, res.stderr


def test_hunts_per_hour_are_limited_per_token(fleet: Fleet, tmp_path: Path) -> None:
    _enroll(fleet.collector, tmp_path / "quiet", "quiet-1", ("role=quiet",))
    with fleet.collector.store() as store:
        token, _ = store.create_token("engineer", role="engineer", label="bob", ttl=dt.timedelta(hours=1))
    md = (("authorization", f"Bearer {token}"),)
    spec = collector_pb2.HuntSpec(labels=["role=quiet"], case_id="SR-7", expires_s=60)
    with fleet.collector.channel() as ch:
        stub = collector_pb2_grpc.HuntStub(ch)
        for _ in range(HUNTS_PER_HOUR):
            stub.CreateHunt(spec, metadata=md, timeout=60)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateHunt(spec, metadata=md, timeout=60)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"at most {HUNTS_PER_HOUR}" in (info.value.details() or "")
    with fleet.collector.store() as store:
        refused = store.list_audit(5, action="hunt.create", outcome="exhausted")
    assert refused, "the refused hunt is audited"


def test_labels_at_enroll_via_the_agent_cli(fleet: Fleet, tmp_path: Path) -> None:
    c = fleet.collector
    with c.store() as store:
        token, _ = store.create_token("enroll", label="test", ttl=dt.timedelta(hours=1), max_uses=1)
    base = [str(BIN / "casefile"), "agent", "enroll", "--collector", c.addr, "--token", token,
            "--ca-fingerprint", c.fingerprint, "--home", str(tmp_path / "h")]
    bad = subprocess.run([*base, "--label", "role"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not key=value" in bad.stderr, bad.stderr
    ok = subprocess.run([*base, "--label", "role=cli", "--label", "site=nice"], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    agent_id = AgentHome(tmp_path / "h").enrollment().agent_id  # type: ignore[union-attr]
    with c.store() as store:
        assert store.agent_labels([agent_id]) == {agent_id: {"role": "cli", "site": "nice"}}


def test_the_collector_checks_labels_again_and_spends_no_token_on_bad_ones(fleet: Fleet, tmp_path: Path) -> None:
    """A modified agent can send anything: the collector refuses, the token stays usable."""
    c = fleet.collector
    with c.store() as store:
        token, _ = store.create_token("enroll", label="test", ttl=dt.timedelta(hours=1), max_uses=1)
    key = AgentHome(tmp_path / "raw").key()
    with c.channel() as ch:
        with pytest.raises(EnrollmentError) as info:
            enroll(ch, token=token, key=key, hostname="web-x", agent_version="t", labels=("role=web\x1b]0;x\x07",))
        assert "INVALID_ARGUMENT" in str(info.value) and "U+001B" in str(info.value)
        resp = enroll(ch, token=token, key=key, hostname="web-x", agent_version="t", labels=("role=web",))
    with c.store() as store:
        assert store.agent_labels([resp.agent_id]) == {resp.agent_id: {"role": "web"}}
