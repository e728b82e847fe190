"""The collector's doorbell (collector.doorbell) against what a client may send it: a real
collector on loopback, real TLS, real keys; the agent's own client (agent.daemon.doorbell)
for the honest side and raw sockets for the rest."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.daemon.doorbell import Doorbell, DoorbellRefused
from agent.keys import SigningKey
from agent.state import AgentHome, Enrollment
from agent.transport import enroll
from agent.transport.channel_proof import channel_message, doorbell_message
from agent.transport.connect import PINNED_TARGET_NAME, fetch_certificate, parse_address
from agent.transport.doorbell import NONCE, PROOF, RING, FrameReader, frame, proof
from agent.transport.live_states import LiveState
from tests.collector.conftest import RunningCollector

_T = TypeVar("_T")


def _on_loop(c: RunningCollector, coro: Coroutine[Any, Any, _T]) -> _T:
    assert c.server.loop is not None
    return asyncio.run_coroutine_threadsafe(coro, c.server.loop).result(30)


def _enrolled(c: RunningCollector, home: Path, hostname: str = "bell-host") -> tuple[str, SigningKey]:
    state = AgentHome(home)
    key = state.key()
    with c.channel() as ch:
        resp = enroll(ch, token=c.enroll_token(), key=key, hostname=hostname, agent_version="t")
    state.save_enrollment(Enrollment(resp.agent_id, c.address, c.fingerprint, key.fingerprint))
    return resp.agent_id, key


def _port(c: RunningCollector) -> int:
    assert c.server.doorbell is not None
    return c.server.doorbell.port


async def _park(c: RunningCollector, agent_id: str, key: SigningKey) -> Doorbell:
    return await Doorbell.park(parse_address(c.address), _port(c), c.fingerprint, key, agent_id, 10.0)


async def _park_and_leave(c: RunningCollector, agent_id: str, key: SigningKey) -> None:
    bell = await _park(c, agent_id, key)
    await bell.close()


def _wait(what: str, check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _audit(c: RunningCollector, outcome: str) -> list[Any]:
    return c.store.list_audit(50, action="channel.park", outcome=outcome)


class RawClient:
    """TLS to the doorbell with the collector's certificate, then whatever bytes a test sends."""

    def __init__(self, c: RunningCollector) -> None:
        pem = fetch_certificate(parse_address(c.address)).decode()
        ctx = ssl.create_default_context(cadata=pem)
        self.sock = ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", _port(c)), timeout=10), server_hostname=PINNED_TARGET_NAME
        )
        self.frames = FrameReader()

    def read_frame(self) -> tuple[int, bytes]:
        while True:
            data = self.sock.recv(1024)
            if not data:
                raise ConnectionError("closed")
            got = self.frames.feed(data)
            if got:
                return got[0]

    def closed(self) -> bool:
        try:
            return self.sock.recv(1024) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()


def test_an_enrolled_agent_parks_is_online_and_is_rung(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    c = sqlite_collector
    agent_id, key = _enrolled(c, tmp_path / "home")

    async def scenario() -> str:
        bell = await _park(c, agent_id, key)
        try:
            router = c.server.router
            assert agent_id in router.parked()
            assert await router.is_online(agent_id)
            assert await router.online_among([agent_id, "ag_nobody"]) == {agent_id}
            waiting = asyncio.create_task(bell.wait())
            await asyncio.sleep(0.05)
            assert not waiting.done()  # nothing sent while parked
            assert _on_loop_async(c, lambda: router.ring(agent_id))
            return await asyncio.wait_for(waiting, 5)
        finally:
            await bell.close()

    assert asyncio.run(scenario()) == "ring"
    _wait("unparked", lambda: agent_id not in c.server.router.parked())
    _wait("audited", lambda: _audit(c, "ok"))


def test_a_request_for_a_parked_agent_rings_it_and_stays_queued(
    sqlite_collector: RunningCollector, tmp_path: Path
) -> None:
    import datetime as dt

    c = sqlite_collector
    agent_id, key = _enrolled(c, tmp_path / "home")

    async def scenario() -> str:
        bell = await _park(c, agent_id, key)
        try:
            rec = c.store.create_live_request(
                agent_id=agent_id, hostname="bell-host", requested_by="t", requested_label="t", scopes=("facts",),
                since_s=0, reason="ring", expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
            )
            sent = await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(c.server.router.deliver(rec), c.server.loop)  # type: ignore[arg-type]
            )
            assert sent is False  # not sent: rung, for the Channel the agent opens to drain
            assert c.store.get_live_request(rec.request_id).state == LiveState.QUEUED
            return await asyncio.wait_for(bell.wait(), 5)
        finally:
            await bell.close()

    assert asyncio.run(scenario()) == "ring"


@pytest.mark.parametrize("forgery", ["stranger", "channel-label", "other-id", "unknown"])
def test_proofs_that_do_not_hold_are_refused_and_audited(
    sqlite_collector: RunningCollector, tmp_path: Path, forgery: str
) -> None:
    c = sqlite_collector
    agent_id, key = _enrolled(c, tmp_path / "home")
    raw = RawClient(c)
    try:
        kind, nonce = raw.read_frame()
        assert kind == NONCE and len(nonce) == 32
        claimed, signature = agent_id, key.sign(doorbell_message(nonce, agent_id))
        if forgery == "stranger":
            signature = SigningKey.generate().sign(doorbell_message(nonce, agent_id))
        elif forgery == "channel-label":  # a Channel signature is not a doorbell one
            signature = key.sign(channel_message(nonce, agent_id))
        elif forgery == "other-id":
            signature = key.sign(doorbell_message(nonce, "ag_other"))
        else:
            claimed = "ag_0000000000000000"
            signature = key.sign(doorbell_message(nonce, claimed))
        raw.sock.sendall(frame(PROOF, proof(claimed, signature)))
        kind, why = raw.read_frame()
        assert kind == 4, (kind, why)  # REFUSED
        text = why.decode()
        assert ("unknown agent" in text) if forgery == "unknown" else ("not signed by the key" in text), text
        assert raw.closed()
    finally:
        raw.close()
    assert c.server.router.parked() == []
    _wait("denial audited", lambda: _audit(c, "denied"))


def test_garbage_is_closed_and_the_doorbell_keeps_serving(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    c = sqlite_collector
    agent_id, key = _enrolled(c, tmp_path / "home")
    # Not TLS at all.
    with socket.create_connection(("127.0.0.1", _port(c)), timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        plain.settimeout(5)  # closed at once (a TLS alert may come first), not left to the timeout
        with contextlib.suppress(ConnectionResetError):
            while plain.recv(1024):
                pass
    # TLS, then an unknown frame type; then a frame out of order (RING from the client).
    for bad in (b"\x09\x00\x00", frame(RING)):
        raw = RawClient(c)
        try:
            raw.read_frame()
            raw.sock.sendall(bad)
            assert raw.closed()
        finally:
            raw.close()
    # A parked client that sends anything more is closed and unparked.
    raw = RawClient(c)
    try:
        _kind, nonce = raw.read_frame()
        raw.sock.sendall(frame(PROOF, proof(agent_id, key.sign(doorbell_message(nonce, agent_id)))))
        assert raw.read_frame()[0] == 3  # PARKED
        assert agent_id in c.server.router.parked()
        raw.sock.sendall(frame(PROOF, proof(agent_id, key.sign(doorbell_message(nonce, agent_id)))))
        assert raw.closed()
    finally:
        raw.close()
    _wait("unparked", lambda: agent_id not in c.server.router.parked())
    # Still serving.
    asyncio.run(_park_and_leave(c, agent_id, key))
    assert c.server.doorbell is not None and c.server.doorbell.handshaking == 0


def test_handshakes_are_bounded_in_number_and_time(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    c = sqlite_collector
    agent_id, key = _enrolled(c, tmp_path / "home")
    server = c.server.doorbell
    assert server is not None
    server.max_handshakes, server.first_byte_timeout_s, server.handshake_timeout_s = 1, 0.5, 5.0
    silent = socket.create_connection(("127.0.0.1", _port(c)), timeout=10)  # takes the one slot, says nothing
    try:
        _wait("counted", lambda: server.handshaking == 1)
        with pytest.raises(DoorbellRefused):
            asyncio.run(_park(c, agent_id, key))  # closed at once: busy
        assert server.busy_refusals >= 1
        t0 = time.monotonic()
        assert silent.recv(1024) == b""  # the silent one is dropped after the first-byte timeout
        assert time.monotonic() - t0 < 3.0
    finally:
        silent.close()
    _wait("slot free", lambda: server.handshaking == 0 and not server.by_host)
    asyncio.run(_park_and_leave(c, agent_id, key))


def test_one_address_cannot_take_every_handshake_slot(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    """Silent connections from one address hold at most ``max_per_host`` slots: the rest of
    the global bound stays for the other addresses."""
    c = sqlite_collector
    agent_id, key = _enrolled(c, tmp_path / "home")
    server = c.server.doorbell
    assert server is not None
    server.max_per_host, server.first_byte_timeout_s = 2, 5.0
    held = [socket.create_connection(("127.0.0.1", _port(c)), timeout=10) for _ in range(2)]
    try:
        _wait("two held", lambda: server.by_host.get("127.0.0.1") == 2)
        refused = server.busy_refusals
        with pytest.raises(DoorbellRefused):
            asyncio.run(_park(c, agent_id, key))  # a third from 127.0.0.1: closed at once
        assert server.busy_refusals == refused + 1
        assert server.handshaking == 2  # the global bound (128) is far: only this address is full
    finally:
        for sock in held:
            sock.close()
    _wait("slots free", lambda: server.handshaking == 0 and not server.by_host)
    asyncio.run(_park_and_leave(c, agent_id, key))


def test_a_newer_doorbell_replaces_the_older(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    c = sqlite_collector
    agent_id, key = _enrolled(c, tmp_path / "home")

    async def scenario() -> str:
        first = await _park(c, agent_id, key)
        second = await _park(c, agent_id, key)
        try:
            # The first is closed by the collector: its wait ends, not with a ring.
            why = await asyncio.wait_for(first.wait(), 5)
            assert c.server.router.parked() == [agent_id]
            _on_loop_async(c, lambda: c.server.router.ring(agent_id))
            assert await asyncio.wait_for(second.wait(), 5) == "ring"
            return why
        finally:
            await first.close()
            await second.close()

    assert asyncio.run(scenario()).startswith("closed")


def test_a_case_token_identity_cannot_park(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    from agent.transport import UploadTarget, upload_bundle
    from tests.collector.conftest import small_bundle

    c = sqlite_collector
    token, _ = c.store.create_token("case", case_id="SR-1", label="customer")
    key = SigningKey.generate()
    b = small_bundle(tmp_path / "case", key, case_id="SR-1")
    with c.channel() as ch:
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, case_token=token))
    with pytest.raises(DoorbellRefused, match="case-token identity"):
        asyncio.run(_park(c, receipt.agent_id, key))
    _wait("denial audited", lambda: _audit(c, "denied"))


def test_a_stream_that_ends_while_its_request_is_marked_delivered_gives_it_back(
    sqlite_collector: RunningCollector, tmp_path: Path
) -> None:
    """The agent parks (its stream ends) just as a request is being sent down it: the request
    is queued again, not left ``delivered`` on a stream nobody reads."""
    import datetime as dt

    c = sqlite_collector
    router = c.server.router
    agent_id, _key = _enrolled(c, tmp_path / "home", "race-host")

    async def scenario() -> tuple[bool, int]:
        session = router.register(agent_id, "ipv4:127.0.0.1:1")
        rec = await asyncio.to_thread(
            lambda: c.store.create_live_request(
                agent_id=agent_id, hostname="race-host", requested_by="t", requested_label="t", scopes=("facts",),
                since_s=0, reason="race", expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
            )
        )
        sending = asyncio.create_task(router.deliver(rec))
        await asyncio.sleep(0)  # deliver is past its look-up, awaiting the store
        router.unregister(session)
        return await sending, session.outbox.qsize()

    sent, queued_on_dead_stream = _on_loop(c, scenario())
    assert (sent, queued_on_dead_stream) == (False, 0)
    [rec] = c.store.queued_live_requests(agent_id)
    assert rec.state == LiveState.QUEUED and "ended before it was sent" in rec.detail


def test_rings_are_paced_and_a_slot_frees_when_its_agent_is_back(
    sqlite_collector: RunningCollector, tmp_path: Path
) -> None:
    """At most ``ring_window`` agents rung and not back: the next waits until one's bell closes."""
    c = sqlite_collector
    router = c.server.router
    router.ring_window = 1
    first, key1 = _enrolled(c, tmp_path / "a", "bell-a")
    second, key2 = _enrolled(c, tmp_path / "b", "bell-b")

    async def scenario() -> tuple[bool, str]:
        bell1, bell2 = await _park(c, first, key1), await _park(c, second, key2)
        try:
            assert _on_loop_async(c, lambda: router.ring(first)) and _on_loop_async(c, lambda: router.ring(second))
            assert await asyncio.wait_for(bell1.wait(), 5) == "ring"
            waiting = asyncio.create_task(bell2.wait())
            await asyncio.sleep(0.3)
            held = not waiting.done()  # the one slot is the first agent's
            await bell1.close()  # back on its Channel: the slot goes to the next
            return held, await asyncio.wait_for(waiting, 5)
        finally:
            await bell1.close()
            await bell2.close()

    assert asyncio.run(scenario()) == (True, "ring")


def _on_loop_async(c: RunningCollector, fn: Any) -> Any:
    """``fn()`` on the collector's loop (the router lives there), from a thread that may run its own."""

    async def call() -> Any:
        return fn()

    return _on_loop(c, call())
