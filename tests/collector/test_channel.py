"""The Channel handshake and the agent's own guards, against a real collector on loopback.

The agent side runs the real ``AgentService`` in a thread of this process, so the test can
push requests through the collector's router directly (an expired one, a replayed id).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.daemon import AgentService, DaemonOptions, channel_message
from agent.keys import SigningKey
from agent.state import AgentHome, Enrollment
from agent.transport import UploadTarget, enroll, upload_bundle
from agent.transport.connect import PINNED_TARGET_NAME, fetch_certificate, parse_address
from collector.server import ServerConfig
from collector.storage import LiveRequestRecord
from protos import collector_pb2, collector_pb2_grpc
from tests.collector.conftest import RunningCollector, _run_server, small_bundle


def _enrolled(collector: RunningCollector, home: Path) -> tuple[str, SigningKey]:
    state = AgentHome(home)
    key = state.key()
    with collector.channel() as ch:
        resp = enroll(ch, token=collector.enroll_token(), key=key, hostname="chan-host", agent_version="t")
    state.save_enrollment(Enrollment(resp.agent_id, collector.address, collector.fingerprint, key.fingerprint))
    return resp.agent_id, key


async def _handshake(collector: RunningCollector, agent_id: str, sign: Any) -> list[Any]:
    pem = fetch_certificate(parse_address(collector.address))
    creds = grpc.ssl_channel_credentials(root_certificates=pem)
    async with grpc.aio.secure_channel(
        collector.address, creds, options=[("grpc.ssl_target_name_override", PINNED_TARGET_NAME)]
    ) as ch:
        call: Any = collector_pb2_grpc.ChannelStub(ch).Connect()
        await call.write(collector_pb2.AgentMessage(hello=collector_pb2.ChannelHello(agent_id=agent_id)))
        challenge = await call.read()
        sig = sign(bytes(challenge.challenge.nonce))
        await call.write(collector_pb2.AgentMessage(challenge_response=collector_pb2.ChallengeResponse(signature=sig)))
        got = [challenge, await call.read()]
        call.cancel()
        return got


def test_challenge_must_be_signed_by_the_enrolled_key(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    agent_id, key = _enrolled(sqlite_collector, tmp_path / "home")
    stranger = SigningKey.generate()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        asyncio.run(_handshake(sqlite_collector, agent_id, lambda n: stranger.sign(channel_message(n, agent_id))))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # The right key over another identity's message (the id is inside what is signed).
    with pytest.raises(grpc.aio.AioRpcError) as info:
        asyncio.run(_handshake(sqlite_collector, agent_id, lambda n: key.sign(channel_message(n, "ag_other"))))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # A signature captured on one stream is worthless on the next: fresh nonce each time.
    captured: list[bytes] = []

    def record(n: bytes) -> bytes:
        captured.append(n)
        return key.sign(channel_message(n, agent_id))

    first = asyncio.run(_handshake(sqlite_collector, agent_id, record))
    assert first[1].accepted.agent_id == agent_id
    old = key.sign(channel_message(captured[0], agent_id))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        asyncio.run(_handshake(sqlite_collector, agent_id, lambda n: old))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        asyncio.run(_handshake(sqlite_collector, "ag_unknown", lambda n: key.sign(channel_message(n, "ag_unknown"))))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


class _Daemon:
    def __init__(self, home: Path) -> None:
        self.service: AgentService | None = None
        self.loop = asyncio.new_event_loop()
        self.home = home
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.service = AgentService(AgentHome(self.home), DaemonOptions(0.05, 0.2))
            await self.service.run()

        try:
            self.loop.run_until_complete(main())
        finally:
            # An unclosed loop is reported when the GC finds it, inside whichever test runs then.
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def __enter__(self) -> _Daemon:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.service is not None:
            self.loop.call_soon_threadsafe(self.service.stop)
        self.thread.join(30)


def _push(collector: RunningCollector, rec: LiveRequestRecord) -> bool:
    """Deliver through the router, on the collector's own loop (where it lives); False when
    the router did not send it (another path claimed it first)."""
    assert collector.server.loop is not None
    fut = asyncio.run_coroutine_threadsafe(collector.server.router.deliver(rec), collector.server.loop)
    return bool(fut.result(10))


def _wait(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def connected(sqlite_collector: RunningCollector, tmp_path: Path) -> Iterator[tuple[RunningCollector, str, Path]]:
    agent_id, _ = _enrolled(sqlite_collector, tmp_path / "home")
    with _Daemon(tmp_path / "home"):
        _wait("agent connected", lambda: sqlite_collector.server.router.session(agent_id) is not None)
        yield sqlite_collector, agent_id, tmp_path / "home"


def _request(store: Any, agent_id: str, *, expires_in: float) -> LiveRequestRecord:
    rec: LiveRequestRecord = store.create_live_request(
        agent_id=agent_id,
        hostname="chan-host",
        requested_by="tok",
        requested_label="bob",
        scopes=("facts",),
        since_s=0,
        reason="test",
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in),
    )
    return rec


def test_case_identity_cannot_hold_a_live_channel(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    """Live channels are for enrolled agents: a customer's case-token identity (hostname
    self-declared) is refused, so live requests for a hostname never reach it."""
    c = sqlite_collector
    _enrolled(c, tmp_path / "home")
    token, _ = c.store.create_token("case", case_id="SR-1", label="customer")
    key = SigningKey.generate()
    b = small_bundle(tmp_path / "case", key, case_id="SR-1")
    with c.channel() as ch:
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, case_token=token))
    agent_id = receipt.agent_id
    with pytest.raises(grpc.aio.AioRpcError) as info:
        asyncio.run(_handshake(c, agent_id, lambda n: key.sign(channel_message(n, agent_id))))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "enrolled agents" in (info.value.details() or "")
    row = c.store.list_audit(limit=1)[0]
    assert (row.action, row.outcome, row.actor) == ("channel.connect", "denied", agent_id)


def test_agent_refuses_expired_and_replayed_requests(connected: tuple[RunningCollector, str, Path]) -> None:
    collector, agent_id, home = connected
    store = collector.store
    # A request made before the new stream's drain has read the queue is the drain's: it
    # expires it on the collector's side, and this deliver finds it claimed. The drain reads
    # once, so the next one is sent (seen on a slow CI machine).
    for _ in range(2):
        expired = _request(store, agent_id, expires_in=-5)
        if _push(collector, expired):
            break
    else:
        raise AssertionError("the router sent neither request")
    rec = _wait("expired", lambda: (r := store.get_live_request(expired.request_id)).state == "expired" and r)
    assert rec.detail.startswith("request expired at")
    # The same request id again (a replay by anyone able to push; the router itself sends
    # only queued requests): refused, not executed.
    from collector.live_router import request_message, spec_envelope

    session = collector.server.router.session(agent_id)
    assert session is not None and collector.server.loop is not None
    message = request_message(expired, spec_envelope(store, expired))
    collector.server.loop.call_soon_threadsafe(session.outbox.put_nowait, message)
    history = home / "history.jsonl"
    _wait("duplicate recorded", lambda: history.exists() and '"duplicate"' in history.read_text())
    assert '"accepted"' not in history.read_text()


def test_connection_age_goaway_reconnects_without_a_clone_alarm(tmp_path: Path) -> None:
    # The collector ends every connection after its maximum age (GOAWAY), so agents spread
    # over replicas. The agent drops that stream and dials again at once: the collector
    # must have let go of the old one by then, or a second stream is refused as a clone.
    config = ServerConfig(
        address="127.0.0.1:0", data_dir=tmp_path / "collector", max_connection_age_s=0.6, max_connection_age_grace_s=0.3
    )
    gen = _run_server(config)
    collector = next(gen)
    try:
        agent_id, _ = _enrolled(collector, tmp_path / "home")

        def audit(outcome: str) -> list[Any]:
            return collector.store.list_audit(100, actor=agent_id, action="channel.connect", outcome=outcome)

        with _Daemon(tmp_path / "home"):
            deadline = time.monotonic() + 60
            while len(audit("ok")) < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert len(audit("ok")) >= 5
        assert [r.detail for r in audit("denied")] == []
    finally:
        gen.close()
