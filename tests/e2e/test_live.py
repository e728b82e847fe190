"""Live snapshots end to end: a real collector process, real ``casefile agent run`` processes.

Everything talks TLS on loopback with the pinned certificate. Waits are bounded polls of
real state (the audit log, the agent's history file, the store), never sleeps-and-hope.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.keys import SigningKey
from agent.state import AgentHome, Enrollment
from agent.transport import enroll, open_channel, parse_address
from collector.storage import Store
from protos import collector_pb2, collector_pb2_grpc
from tests.agent.test_daemon_worker import DAEMON_NEVER_IMPORTS

BIN = Path(sys.executable).parent
HOSTNAME = socket.gethostname()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, logs: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{logs()}" if logs else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Collector:
    data: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    fingerprint: str = ""
    args: tuple[str, ...] = ()  # more `serve` options

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        ready = self.data.parent / f"ready-{self.port}.json"
        ready.unlink(missing_ok=True)
        with self.log.open("a") as fh:
            proc = self.proc = subprocess.Popen(
                [str(BIN / "casefile-collector"), "serve", "--address", self.addr, "--data-dir", str(self.data),
                 "--ready-file", str(ready), *self.args],
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        wait_for("collector ready", lambda: ready.exists() or proc.poll() is not None, logs=self.log.read_text)
        assert proc.poll() is None, self.log.read_text()
        self.fingerprint = json.loads(ready.read_text())["fingerprint"]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None

    def store(self) -> Store:
        return Store.open(f"sqlite:///{self.data / 'casefile.db'}")

    def channel(self) -> grpc.Channel:
        return open_channel(parse_address(self.addr), ca_fingerprint=self.fingerprint)


@dataclass
class Agent:
    home: Path
    agent_id: str
    log: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "CASEFILE_AGENT_BACKOFF_MAX": "0.5", "CASEFILE_AGENT_BACKOFF_BASE": "0.1"}
        with self.log.open("a") as fh:
            proc = subprocess.Popen(
                [str(BIN / "casefile"), "agent", "run", "--home", str(self.home)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(30)
            assert proc.returncode == 0, self.log.read_text()

    def history(self) -> list[dict[str, Any]]:
        path = self.home / "history.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def enroll_agent(c: Collector, home: Path, hostname: str) -> Agent:
    with c.store() as store:
        token, _ = store.create_token("enroll", label="test", ttl=dt.timedelta(hours=1), max_uses=1)
    state = AgentHome(home)
    key: SigningKey = state.key()
    with c.channel() as ch:
        resp = enroll(ch, token=token, key=key, hostname=hostname, agent_version="test")
    state.save_enrollment(Enrollment(resp.agent_id, c.addr, c.fingerprint, key.fingerprint))
    return Agent(home=home, agent_id=resp.agent_id, log=home.parent / f"agent-{resp.agent_id}.log")


def connects(c: Collector, agent_id: str) -> int:
    with c.store() as store:
        return len(store.list_audit(100, actor=agent_id, action="channel.connect", outcome="ok"))


@dataclass
class Live:
    collector: Collector
    agent: Agent
    tokens: dict[str, str]

    def snapshot(self, role: str = "engineer", **spec: Any) -> list[collector_pb2.SnapshotEvent]:
        req = collector_pb2.SnapshotRequestSpec(**{"host": self.agent.agent_id, **spec})
        md = (("authorization", f"Bearer {self.tokens[role]}"),)
        with self.collector.channel() as ch:
            return list(collector_pb2_grpc.QueryStub(ch).RequestSnapshot(req, metadata=md, timeout=90))


def _tokens(c: Collector) -> dict[str, str]:
    out = {}
    with c.store() as store:
        for role in ("viewer", "engineer", "admin"):
            out[role], _ = store.create_token("engineer", role=role, label=f"{role} alice", ttl=dt.timedelta(hours=1))
    return out


def _start(tmp: Path) -> Live:
    c = Collector(data=tmp / "data", port=free_port(), log=tmp / "collector.log")
    c.start()
    agent = enroll_agent(c, tmp / "home", HOSTNAME)
    before = connects(c, agent.agent_id)
    agent.start()
    wait_for("agent connected", lambda: connects(c, agent.agent_id) > before, logs=agent.log.read_text)
    return Live(c, agent, _tokens(c))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    env = _start(tmp_path_factory.mktemp("live"))
    try:
        yield env
    finally:
        env.agent.stop_all()
        env.collector.stop()


def test_engineer_snapshot_reaches_agent_and_is_stored(live: Live) -> None:
    c = live.collector
    res = subprocess.run(
        [str(BIN / "casefile-collector"), "snapshot", HOSTNAME, "--collector", c.addr, "--token",
         live.tokens["engineer"], "--ca-fingerprint", c.fingerprint, "--reason", "SR-1 slow disk", "--timeout", "60"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "160"},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    states = [line.split()[2] for line in res.stdout.splitlines() if line[:2] == "20" and len(line.split()) > 2]
    assert states[:2] == ["queued", "delivered"] and "collecting" in states and states[-1] == "done", res.stdout
    bundle_id = res.stdout.split("bundle ")[-1].split()[0]
    assert f"bundle {bundle_id} from" in res.stdout  # the summary (show's rendering)
    assert "Findings" in res.stdout or "No findings" in res.stdout
    with c.store() as store:
        rec = store.get_bundle(bundle_id)
        manifest = json.loads(store.get_bundle_content(bundle_id)[1])
    assert rec.kind == "live" and rec.agent_id == live.agent.agent_id
    assert manifest["request_id"] and manifest["kind"] == "live"
    hist = [e for e in live.agent.history() if e.get("request_id") == manifest["request_id"]]
    assert [e["outcome"] for e in hist] == ["accepted", "done"]
    assert hist[0]["requested_by"] == "engineer alice" and hist[0]["reason"] == "SR-1 slow disk"
    assert hist[1]["bundle_id"] == bundle_id
    shown = subprocess.run(
        [str(BIN / "casefile"), "agent", "history", "--home", str(live.agent.home), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    listed = json.loads(shown.stdout)  # one document: the list of entries
    assert [e["outcome"] for e in listed if e.get("request_id") == manifest["request_id"]] == ["accepted", "done"]


def test_policy_denial_is_answered_not_dropped(live: Live) -> None:
    events = live.snapshot(scopes=["facts", "logs"], since_seconds=600)
    assert events[-1].state == "denied"
    assert events[-1].detail.startswith("denied by policy: scope 'logs' is not allowed"), events[-1].detail
    assert live.agent.history()[-1]["outcome"] == "denied"


def test_a_real_agents_states_reach_the_engineer_as_enum_and_word(live: Live) -> None:
    """The agent process sends ``SnapshotProgress`` with both fields, the collector stores
    and streams both (``agent.transport.live_states``): every event's enum and word agree."""
    from agent.transport.live_states import state_of, to_wire

    events = live.snapshot(reason="enum and word")
    states = [state_of(e) for e in events]
    assert states[:2] == ["queued", "delivered"] and "collecting" in states and states[-1] == "done", events
    assert all(e.live_state == to_wire(e.state) != collector_pb2.LIVE_STATE_UNSPECIFIED for e in events), events


def test_viewer_may_not_request_snapshots(live: Live) -> None:
    with pytest.raises(grpc.RpcError) as info:
        live.snapshot(role="viewer")
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_agent_cannot_call_query(live: Live) -> None:
    """An agent holds a key and maybe its enrollment token, never an engineer token."""
    with live.collector.channel() as ch:
        stub = collector_pb2_grpc.QueryStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListHosts(collector_pb2.ListHostsRequest(), timeout=30)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        key = AgentHome(live.agent.home).key()
        md = (("authorization", f"Bearer {key.fingerprint}"),)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.RequestSnapshot(collector_pb2.SnapshotRequestSpec(host=HOSTNAME), metadata=md, timeout=30))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_offline_agent_fails_fast_with_last_seen_and_expires_when_queued(live: Live, tmp_path: Path) -> None:
    other = enroll_agent(live.collector, tmp_path / "offline-home", "offline-box")
    probe = Live(live.collector, other, live.tokens)
    with pytest.raises(grpc.RpcError) as info:
        probe.snapshot()
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert f"agent {other.agent_id} (offline-box) offline since never" in (info.value.details() or "")
    events = probe.snapshot(wait_s=1, timeout_s=1)
    assert [e.state for e in events][:2] == ["queued", "queued"] and events[-1].state == "expired"
    with live.collector.store() as store:
        assert store.get_live_request(events[-1].request_id).state == "expired"


def test_second_stream_for_the_same_agent_is_refused_and_audited(live: Live) -> None:
    clone = live.agent.start()
    try:
        def refused() -> bool:
            with live.collector.store() as store:
                rows = store.list_audit(50, actor=live.agent.agent_id, action="channel.connect", outcome="denied")
            return any("possibly a cloned machine" in r.detail for r in rows)

        wait_for("duplicate stream refused", refused, logs=live.agent.log.read_text)
        # The collector audits before the clone hears the refusal and logs it: wait for both.
        wait_for("the clone to log the refusal", lambda: "ALREADY_EXISTS" in live.agent.log.read_text(),
                 logs=live.agent.log.read_text)
    finally:
        clone.send_signal(signal.SIGTERM)
        clone.wait(30)
    assert live.snapshot()[-1].state == "done"  # the original stream still serves


def test_admin_reads_the_audit_log(live: Live) -> None:
    c = live.collector
    base = [str(BIN / "casefile-collector"), "audit", "--collector", c.addr, "--ca-fingerprint", c.fingerprint]
    res = subprocess.run([*base, "--token", live.tokens["admin"], "--action", "live.request_snapshot", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)  # one JSON document
    assert rows and all(r["action"] == "live.request_snapshot" for r in rows)
    # The requests' own outcomes (done, denied by the agent) and the viewer's refused call.
    assert {"done", "denied"} <= {r["outcome"] for r in rows}
    res = subprocess.run([*base, "--token", live.tokens["engineer"]], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "the token's role does not allow this" in res.stderr


def test_a_logs_request_without_a_window_gets_the_policys_maximum(live: Live, tmp_path: Path) -> None:
    """``snapshot --scope logs`` without ``--since`` sends 0; the agent took that as "no
    window asked", skipped the policy's max_logs_window_s and collected a day of logs."""
    c = live.collector
    agent = enroll_agent(c, tmp_path / "logs-home", "logs-box")
    policy = {"allowed_scopes": ["facts", "logs"], "max_logs_window_s": 120}
    (agent.home / "policy.json").write_text(json.dumps(policy))
    before = connects(c, agent.agent_id)
    agent.start()
    try:
        wait_for("agent connected", lambda: connects(c, agent.agent_id) > before, logs=agent.log.read_text)
        with c.store() as store:  # the agent said on connecting what its policy allows (the console offers it)
            assert store.agent_live_policies([agent.agent_id]) == {agent.agent_id: policy}
        events = Live(c, agent, live.tokens).snapshot(scopes=["logs"], reason="no --since")
        assert events[-1].state == "done", events[-1]
        with c.store() as store:
            manifest = json.loads(store.get_bundle_content(events[-1].bundle_id)[1])
        assert manifest["spec"]["options"]["logs_since_s"] == 120, manifest["spec"]
        accepted = next(e for e in agent.history() if e["outcome"] == "accepted")
        assert accepted["since_s"] == 120
        denied = Live(c, agent, live.tokens).snapshot(scopes=["logs"], since_seconds=121)
        assert denied[-1].detail == "denied by policy: logs window 121 s exceeds max_logs_window_s 120"
    finally:
        agent.stop_all()


def _audited_after(c: Collector, after_id: int) -> Any:
    """The live.request_snapshot audit row written after ``after_id`` (written as the call ends)."""

    def row() -> Any:
        with c.store() as store:
            rows = store.list_audit(5, action="live.request_snapshot")
        return next((r for r in rows if r.id > after_id), None)

    return wait_for("the audit row", row)


def _last_audit_id(c: Collector) -> int:
    with c.store() as store:
        rows = store.list_audit(1)
    return rows[0].id if rows else 0


def test_the_audit_row_records_how_the_request_ended(live: Live, tmp_path: Path) -> None:
    """It said ``ok`` for a snapshot the agent denied by policy while the agent's history
    said ``denied``: the row now records the request's outcome."""
    c = live.collector
    before = _last_audit_id(c)
    events = live.snapshot(scopes=["fragmentation"], reason="audit: denied")
    assert events[-1].state == "denied" and live.agent.history()[-1]["outcome"] == "denied"
    row = _audited_after(c, before)
    assert (row.outcome, row.target) == ("denied", live.agent.agent_id)
    assert row.detail.startswith("denied by policy: scope 'fragmentation' is not allowed"), row.detail

    before = _last_audit_id(c)
    assert live.snapshot(reason="audit: done")[-1].state == "done"
    row = _audited_after(c, before)
    assert row.outcome == "done" and row.detail.startswith("bundle ") and row.detail.endswith(" stored")

    away = Live(c, enroll_agent(c, tmp_path / "away-home", "away-box"), live.tokens)
    before = _last_audit_id(c)
    with pytest.raises(grpc.RpcError):
        away.snapshot()
    row = _audited_after(c, before)
    assert row.outcome == "offline" and "offline since never" in row.detail
    # One refusal, one row: it was once audited a second time as live.snapshot_offline.
    with c.store() as store:
        about = [r for r in store.list_audit(50) if r.id > before and away.agent.agent_id in r.target + r.detail]
    assert [r.action for r in about] == ["live.request_snapshot"]
    before = _last_audit_id(c)
    assert away.snapshot(wait_s=1, timeout_s=1)[-1].state == "expired"
    assert _audited_after(c, before).outcome == "expired"


def test_text_an_engineer_sends_reaches_the_agent_clean(live: Live) -> None:
    """Who asked and why are shown to the customer: the collector stores them without
    control or bidi characters (the agent cleans them again, trusting no collector)."""
    c = live.collector
    with c.store() as store:
        token, _ = store.create_token(
            "engineer", role="engineer", label="eve\x1b[2J\u202egnp.exe", ttl=dt.timedelta(hours=1)
        )
    events = Live(c, live.agent, {"engineer": token}).snapshot(
        scopes=["fragmentation"], reason="SR-9\tslow \u2066disk\u2069\u0085now"
    )
    with c.store() as store:
        rec = store.get_live_request(events[-1].request_id)
    assert (rec.requested_label, rec.reason) == ("eve[2Jgnp.exe", "SR-9 slow disk now")
    entry = next(e for e in live.agent.history() if e.get("request_id") == rec.request_id)
    assert (entry["requested_by"], entry["reason"]) == ("eve[2Jgnp.exe", "SR-9 slow disk now")


def test_identities_of_case_tokens_never_take_live_requests(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone with a case token can upload claiming the host name ``web-7``; the identity
    that upload makes must never be sent a live request meant for the real web-7, nor be
    chosen among several agents of that name."""
    from agent.transport import UploadTarget, upload_bundle
    from tests.collector.conftest import small_bundle

    c = live.collector
    with c.store() as store:
        case_token, _ = store.create_token("case", case_id="SR-7", label="customer", ttl=dt.timedelta(hours=1))
    # The upload's proof names the machine it runs on; these stand for three other machines.
    monkeypatch.setattr(socket, "gethostname", lambda: "web-7")
    claimants = []
    for n in range(3):
        key = SigningKey.generate()
        b = small_bundle(tmp_path / f"case-{n}", key, case_id="SR-7", hostname="web-7")
        with c.channel() as ch:
            target = UploadTarget(key=key, case_token=case_token)
            claimants.append(upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=target).agent_id)
    monkeypatch.undo()

    def queued_for_claimants() -> list[str]:
        with c.store() as store:
            return [r.request_id for a in claimants for r in store.queued_live_requests(a)]

    web7 = Live(c, live.agent, live.tokens)
    with pytest.raises(grpc.RpcError) as info:
        web7.snapshot(host="web-7", wait_s=1, timeout_s=1)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    details = info.value.details() or ""
    assert "no enrolled agent reports hostname 'web-7'" in details and all(a in details for a in claimants)
    with pytest.raises(grpc.RpcError) as info:
        web7.snapshot(host=claimants[0], wait_s=1, timeout_s=1)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "case-token identity" in (info.value.details() or "")
    assert queued_for_claimants() == []

    # The one enrolled web-7 (offline here) gets it, though the claimants were seen later.
    real = enroll_agent(c, tmp_path / "web7-home", "web-7")
    events = web7.snapshot(host="web-7", wait_s=1, timeout_s=1)
    assert {e.agent_id for e in events if e.agent_id} == {real.agent_id}, events
    # Two enrolled web-7s, neither connected: refused with both ids, not sent to either.
    twin = enroll_agent(c, tmp_path / "web7-twin", "web-7")
    with pytest.raises(grpc.RpcError) as info:
        web7.snapshot(host="web-7", wait_s=1, timeout_s=1)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert real.agent_id in (info.value.details() or "") and twin.agent_id in (info.value.details() or "")
    assert queued_for_claimants() == []


# ---------------------------------------------------------------- collector restarts


@pytest.fixture(scope="module")
def restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    env = _start(tmp_path_factory.mktemp("restart"))
    try:
        yield env
    finally:
        env.agent.stop_all()
        env.collector.stop()


def test_collector_restart_agent_reconnects_and_snapshot_works(restartable: Live) -> None:
    c, agent = restartable.collector, restartable.agent
    before = connects(c, agent.agent_id)
    c.stop()
    c.start()
    wait_for("agent reconnected", lambda: connects(c, agent.agent_id) > before, logs=agent.log.read_text)
    assert restartable.snapshot()[-1].state == "done"


def test_collector_down_during_collection_spools_and_delivers_once(restartable: Live) -> None:
    c, agent = restartable.collector, restartable.agent
    req = collector_pb2.SnapshotRequestSpec(host=agent.agent_id, reason="spool")
    md = (("authorization", f"Bearer {restartable.tokens['engineer']}"),)
    request_id = ""
    with c.channel() as ch:
        for event in collector_pb2_grpc.QueryStub(ch).RequestSnapshot(req, metadata=md, timeout=60):
            request_id = event.request_id
            if event.state == "collecting":
                break
    c.stop(signal.SIGKILL)  # mid-collection: the upload cannot reach anyone

    def outcome(name: str) -> dict[str, Any] | None:
        return next((e for e in agent.history() if e.get("request_id") == request_id and e["outcome"] == name), None)

    spooled = wait_for("bundle spooled", lambda: outcome("spooled"), logs=agent.log.read_text)
    spool_file = next((agent.home / "spool").glob("*.tar.zst"))
    assert hashlib.sha256(spool_file.read_bytes()).hexdigest() == spooled["sha256"]
    c.start()
    delivered = wait_for("spool delivered", lambda: outcome("delivered"), timeout=40, logs=agent.log.read_text)
    assert delivered["bundle_id"] == spooled["bundle_id"]
    assert not list((agent.home / "spool").iterdir())
    with c.store() as store:
        rec = store.get_bundle(spooled["bundle_id"])
        assert store.get_live_request(request_id).state == "done"
        live_bundles = [b for b in store.list_bundles(agent_id=agent.agent_id, page_size=100)[0]]
    from collector.storage import BlobStore

    blob = BlobStore(c.data).blob_path(rec.blob_key)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == spooled["sha256"] == rec.sha256
    same = [b for b in live_bundles if b.sha256 == rec.sha256]
    assert len(same) == 1  # exactly once
    assert sum(1 for e in agent.history() if e.get("request_id") == request_id and e["outcome"] == "delivered") == 1


def test_an_agents_progress_detail_is_stored_clean(tmp_path: Path) -> None:
    """What an agent reports reaches the engineer's terminal (``snapshot`` prints it): a
    compromised agent must not drive that terminal either."""
    import asyncio

    from collector.live import LiveRouter, Session

    with Store.open(f"sqlite:///{tmp_path / 'casefile.db'}") as store:
        rec = store.create_live_request(
            agent_id="ag_1", hostname="h", requested_by="tok_1", requested_label="eng", scopes=("facts",),
            since_s=0, reason="r", expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        )  # fmt: skip
        progress = collector_pb2.SnapshotProgress(request_id=rec.request_id, state="failed", detail="\x1b[2Jx\u202ey")
        asyncio.run(LiveRouter(store).agent_progress(Session(agent_id="ag_1", peer="p"), progress))
        assert store.get_live_request(rec.request_id).detail == "[2Jxy"


def _leaked(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in DAEMON_NEVER_IMPORTS)]


def test_daemon_imports_neither_typer_nor_rich() -> None:
    # Nor the collection machinery or protobuf (the list is in tests/agent/test_daemon_worker.py).
    code = "import json, sys, agent.daemon; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert _leaked(json.loads(out.stdout)) == []


# The real service in a process of its own; on a line on stdin it prints its modules and stops.
_MODULES_PROBE = """
import asyncio, json, sys
from pathlib import Path
from agent.daemon.service import AgentService, DaemonOptions
from agent.state import AgentHome

async def main():
    service = AgentService(AgentHome(Path(sys.argv[1])), DaemonOptions(0.1, 0.5, worker_linger_s=0))
    running = asyncio.create_task(service.run())
    await asyncio.to_thread(sys.stdin.readline)
    print(json.dumps(sorted(sys.modules)), flush=True)
    service.stop()
    await running

asyncio.run(main())
"""


def test_daemon_that_served_a_snapshot_still_holds_no_collection_machinery(live: Live, tmp_path: Path) -> None:
    c = live.collector
    probe = enroll_agent(c, tmp_path / "probe-home", "probe-box")
    before = connects(c, probe.agent_id)
    with probe.log.open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MODULES_PROBE, str(probe.home)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
        )
    try:
        wait_for("probe connected", lambda: connects(c, probe.agent_id) > before, logs=probe.log.read_text)
        events = Live(c, probe, live.tokens).snapshot()
        assert events[-1].state == "done", events[-1]
        out, _ = proc.communicate("modules\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, probe.log.read_text()
    assert _leaked(json.loads(out)) == []



def test_a_plugin_collector_runs_only_under_its_own_scope(live: Live, tmp_path: Path) -> None:
    """casefile-pgsql (a ``casefile.collectors`` entry point) runs in a live snapshot when
    the engineer asks for ``plugin:pgsql`` and the machine's policy lists it; ``facts``
    alone never runs it, and a plugin the policy does not list is denied by name."""
    c = live.collector
    agent = enroll_agent(c, tmp_path / "pg-home", "pg-box")
    policy = {"allowed_scopes": ["facts", "plugin:pgsql"], "max_logs_window_s": 600}
    (agent.home / "policy.json").write_text(json.dumps(policy))
    before = connects(c, agent.agent_id)
    agent.start()
    try:
        wait_for("agent connected", lambda: connects(c, agent.agent_id) > before, logs=agent.log.read_text)
        session = Live(c, agent, live.tokens)

        def ran(events: list[collector_pb2.SnapshotEvent]) -> tuple[dict[str, str], dict[str, Any]]:
            assert events[-1].state == "done", events[-1]
            with c.store() as store:
                manifest = json.loads(store.get_bundle_content(events[-1].bundle_id)[1])
            return {s["name"]: s["status"] for s in manifest["collectors"]}, manifest

        facts_only, _ = ran(session.snapshot(scopes=["facts"]))
        assert facts_only.get("pgsql", "skipped") == "skipped", facts_only
        with_plugin, manifest = ran(session.snapshot(scopes=["plugin:pgsql"], reason="SR-1 database"))
        assert with_plugin["pgsql"] == "ok" and with_plugin["host"] == "ok", with_plugin
        assert manifest["spec"]["options"]["logs_since_s"] == 600  # the policy's logs window bounds the plugin
        denied = session.snapshot(scopes=["plugin:mysql"])
        assert denied[-1].state == "denied"
        assert denied[-1].detail.startswith("denied by policy: scope 'plugin:mysql' is not allowed"), denied[-1]
        with pytest.raises(grpc.RpcError) as info:  # not a scope at all: refused before it is queued
            session.snapshot(scopes=["plugin:"])
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "plugin:<name>" in str(info.value.details())
    finally:
        agent.stop_all()


def test_hosts_shows_agents_without_bundles_and_which_are_connected(live: Live, tmp_path: Path) -> None:
    c = live.collector
    idle = enroll_agent(c, tmp_path / "idle-home", "idle-box")  # enrolled, never started
    waiting = enroll_agent(c, tmp_path / "wait-home", "waiting-box")
    before = connects(c, waiting.agent_id)
    waiting.start()
    try:
        wait_for("agent connected", lambda: connects(c, waiting.agent_id) > before, logs=waiting.log.read_text)
        args = [str(BIN / "casefile-collector"), "hosts", "--collector", c.addr, "--token", live.tokens["viewer"],
                "--ca-fingerprint", c.fingerprint]  # fmt: skip
        env = {**os.environ, "COLUMNS": "200"}
        res = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=60, env=env, check=True)
        agents = {a["agentId"]: a for a in json.loads(res.stdout)["agentsWithoutBundles"]}
        assert agents[waiting.agent_id].get("connected") is True and "lastSeen" in agents[waiting.agent_id]
        assert not agents[idle.agent_id].get("connected") and agents[idle.agent_id]["hostname"] == "idle-box"
        table = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=True).stdout
        line = next(x for x in table.splitlines() if waiting.agent_id in x)
        assert "connected now" in line and "waiting-box" in line, table
    finally:
        waiting.stop_all()
