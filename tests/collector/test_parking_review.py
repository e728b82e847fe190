"""Review of parked agents (collector.doorbell, collector.live_router): defects found, each
shown against a real collector on loopback (TLS, real keys, the agent's own daemon)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import AgentService, DaemonOptions
from agent.state import AgentHome
from agent.transport.live_states import LiveState
from collector.server import ServerConfig
from tests.collector.conftest import RunningCollector, _run_server
from tests.collector.parking import enrolled_home, parking_server, running, until


@pytest.fixture
def parking_collector(tmp_path: Path) -> Iterator[RunningCollector]:
    yield from parking_server(tmp_path)


@pytest.mark.parametrize("original_parks", [False, True])
def test_a_clone_of_a_parked_agent_is_refused_as_a_clone_of_a_connected_one_is(
    parking_collector: RunningCollector, tmp_path: Path, original_parks: bool
) -> None:
    """Two hosts with one agent key (a cloned VM): while the original holds its stream, the
    clone's Channel is refused (ALREADY_EXISTS, "possibly a cloned machine", audited denied).
    While the original is *parked*, the clone's Channel is accepted: nothing is refused or
    audited as denied, and the two take turns (each park closes the other's doorbell)."""
    c = parking_collector
    home, agent_id = enrolled_home(c, tmp_path / "original")
    shutil.copytree(tmp_path / "original", tmp_path / "clone")
    router = c.server.router

    async def main() -> None:
        async with running(home, park=original_parks):
            if original_parks:
                await until("parked", lambda: agent_id in router.parked() and router.session(agent_id) is None)
            else:
                await until("connected", lambda: router.session(agent_id) is not None)
            async with running(AgentHome(tmp_path / "clone")):
                await asyncio.sleep(5)

    asyncio.run(main())
    connects = c.store.list_audit(100, actor=agent_id, action="channel.connect", outcome="ok")
    parks = c.store.list_audit(100, actor=agent_id, action="channel.park", outcome="ok")
    denied = c.store.list_audit(100, actor=agent_id, outcome="denied")
    print(f"connects ok: {len(connects)}, parks ok: {len(parks)}, denied: {len(denied)}")
    assert denied, "the clone was never refused: it took turns with the original, unreported"
    if original_parks:  # the original's doorbell closed when the clone's Channel came unrung
        assert c.store.list_audit(10, actor=agent_id, action="channel.replace")


def _request(c: RunningCollector, agent_id: str, reason: str) -> Any:
    return c.store.create_live_request(
        agent_id=agent_id, hostname="parker", requested_by="t", requested_label="t", scopes=("facts",),
        since_s=0, reason=reason, expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
    )


def _on_loop(c: RunningCollector, coro: Any) -> Any:
    assert c.server.loop is not None
    return asyncio.run_coroutine_threadsafe(coro, c.server.loop).result(30)


@pytest.mark.parametrize("drain_reads", ["before it is marked delivered", "after"])
def test_a_request_given_back_while_the_agent_is_already_back_is_not_stuck(
    parking_collector: RunningCollector, tmp_path: Path, drain_reads: str
) -> None:
    """``LiveRouter._send`` queues a request again when the stream it was marked delivered
    for has ended (the agent parked). If the agent's next stream was accepted meanwhile (it
    was rung by another request) and drained the queue before the request was given back,
    nothing sends it: it stays ``queued`` on a live stream until it expires. (Or, if that
    drain read it while still queued, it is sent down the new stream *and* queued again,
    to be sent a second time by the next drain.)"""
    c = parking_collector
    router = c.server.router
    agent_id = enrolled_home(c, tmp_path / "home")[1]

    async def scenario() -> tuple[int, str]:
        old = router.register(agent_id, "ipv4:127.0.0.1:1")
        rec = await asyncio.to_thread(_request, c, agent_id, "race")
        sending = asyncio.create_task(router.deliver(rec))
        await asyncio.sleep(0)  # deliver is past its look-up, awaiting the store
        router.unregister(old)  # the agent parked: its stream ended
        new = router.register(agent_id, "ipv4:127.0.0.1:2")  # ... and came back, rung by another request
        if drain_reads == "after":
            while (await asyncio.to_thread(c.store.get_live_request, rec.request_id)).state != LiveState.DELIVERED:
                await asyncio.sleep(0)
        await router.drain(agent_id)  # what ChannelService.Connect does once it accepted the stream
        await sending
        await asyncio.sleep(0.2)
        state = (await asyncio.to_thread(c.store.get_live_request, rec.request_id)).state
        sent_down_new = new.outbox.qsize()
        router.unregister(new)
        return sent_down_new, state

    sent, state = _on_loop(c, scenario())
    print(f"sent down the new stream: {sent}, state: {state}")
    assert (sent, state) == (1, LiveState.DELIVERED)


def test_a_parked_agent_is_rung_once_however_many_requests_come(
    parking_collector: RunningCollector, tmp_path: Path
) -> None:
    """The agent reads one ring and goes to its Channel; every further ring (one per
    request, and on PostgreSQL one per queued request each catch-up scan) would wait unread
    in the collector's buffers for as long as the doorbell stays open."""
    from agent.daemon.doorbell import Doorbell
    from agent.transport.connect import parse_address

    c = parking_collector
    home, agent_id = enrolled_home(c, tmp_path / "home")
    assert c.server.doorbell is not None
    port = c.server.doorbell.port

    async def scenario() -> list[int]:
        bell = await Doorbell.park(parse_address(c.address), port, c.fingerprint, home.key(), agent_id, 10.0)
        try:
            for _ in range(3):
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_ring(c, agent_id), c.server.loop))  # type: ignore[arg-type]
            kinds = [(await asyncio.wait_for(bell._next(), 5))[0]]
            with contextlib.suppress(TimeoutError):
                kinds.append((await asyncio.wait_for(bell._next(), 0.5))[0])
            return kinds
        finally:
            await bell.close()

    assert asyncio.run(scenario()) == [5]  # one RING


async def _ring(c: RunningCollector, agent_id: str) -> None:
    assert c.server.router.ring(agent_id)


def test_a_write_after_the_agent_parked_resets_its_stream(parking_collector: RunningCollector, tmp_path: Path) -> None:
    """Evidence for the daemon's fix (``AgentService._session`` drops progress once parked):
    a request the collector sent before it saw the agent park is read and answered after
    ``end_writes``, and its answer's progress, put on ``_outbox`` while that is still set,
    would be written on the half-closed stream. That write does not fail alone: it resets
    the call (RST_STREAM), so whatever the collector sent after the request is lost,
    ``delivered`` to a stream nobody reads. Here with the daemon's own stream and
    handshake, in the order ``_session`` takes."""
    from agent.daemon.h2stream import RpcError
    from protos import collector_pb2

    c = parking_collector
    router = c.server.router
    home, agent_id = enrolled_home(c, tmp_path / "home")
    service = AgentService(home, DaemonOptions())

    async def agent_side() -> str:
        call = await service._open()
        try:
            await service._handshake(call)
            await until("registered", lambda: router.session(agent_id) is not None)
            first = await asyncio.to_thread(_request, c, agent_id, "sent as the agent parks")
            # Sent by this deliver, or by the drain of the stream just accepted when its read
            # of the queue came after the request was made (one of the two claims it).
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(router.deliver(first), c.server.loop))  # type: ignore[arg-type]
            sent = lambda: c.store.get_live_request(first.request_id).state == LiveState.DELIVERED  # noqa: E731
            await until("the request sent down the stream", sent)
            await call.end_writes()  # parked: the stream ends from this side
            msg = collector_pb2.CollectorMessage.FromString(await call.read() or b"")
            assert msg.WhichOneof("msg") == "snapshot_request"
            progress = collector_pb2.SnapshotProgress(request_id=first.request_id, state="collecting")
            try:  # what AgentService._progress → _write did for the request just read
                await call.write(collector_pb2.AgentMessage(progress=progress).SerializeToString())
            except RpcError as exc:
                return f"{exc.code}: {exc.details}"
            return "written"
        finally:
            await call.close()

    outcome = asyncio.run(agent_side())
    assert outcome.startswith("INTERNAL: cannot send on the call"), outcome


def test_a_parked_client_sending_part_of_a_frame_is_closed(
    parking_collector: RunningCollector, tmp_path: Path
) -> None:
    """"Any byte after [the proof] ends the connection" (collector.doorbell): a whole frame
    does; a piece of one (one byte, or a header promising a payload) is kept and waited on."""
    from agent.transport.channel_proof import doorbell_message
    from agent.transport.doorbell import PROOF, frame, proof
    from tests.collector.test_doorbell import RawClient

    c = parking_collector
    home, agent_id = enrolled_home(c, tmp_path / "home")
    key = home.key()
    raw = RawClient(c)
    try:
        _kind, nonce = raw.read_frame()
        raw.sock.sendall(frame(PROOF, proof(agent_id, key.sign(doorbell_message(nonce, agent_id)))))
        assert raw.read_frame()[0] == 3  # PARKED
        raw.sock.sendall(b"\x02")
        raw.sock.settimeout(2)
        try:
            closed = raw.closed()
        except TimeoutError:
            closed = False
        assert closed, "still parked after sending a byte"
    finally:
        raw.close()


def test_one_doorbell_connection_is_checked_once(parking_collector: RunningCollector, tmp_path: Path) -> None:
    """Bytes arriving after the PROOF while it is being checked run the handshake branch of
    ``Bell.data_received`` again (no nonce, no agent id yet): a new NONCE is sent, and
    the next PROOF starts another check (store read, signature, audit row), as many as the
    client sends before the first refusal lands; without a new TLS handshake or slot."""
    import socket

    from agent.keys import SigningKey
    from agent.transport.doorbell import NONCE, PROOF, frame, proof
    from tests.collector.test_doorbell import RawClient

    c = parking_collector
    raw = RawClient(c)
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stranger = SigningKey.generate()
    try:
        assert raw.read_frame()[0] == NONCE
        bogus = frame(PROOF, proof("ag_nobody", stranger.sign(b"x")))
        with contextlib.suppress(OSError):
            for _ in range(200):
                raw.sock.sendall(bogus)
                time.sleep(0.0005)
    finally:
        raw.close()
    time.sleep(1)
    denied = [r for r in c.store.list_audit(500, action="channel.park", outcome="denied") if "ag_nobody" in r.detail]
    print(f"audit rows from one connection: {len(denied)}")
    assert len(denied) == 1


def test_an_ipv6_doorbell_peer_is_named_ipv6(tmp_path: Path) -> None:
    """The doorbell names its peer ``ipv4:HOST:PORT`` whatever the family; the Channel's
    (grpc's) names an IPv6 one ``ipv6:[HOST]:PORT``: the audit rows of one agent disagree."""
    import dataclasses

    from agent.daemon.doorbell import Doorbell
    from agent.transport.connect import parse_address

    gen = _run_server(ServerConfig(address="[::1]:0", data_dir=tmp_path / "collector", park_after_s=1))
    c4 = next(gen)
    try:
        c = dataclasses.replace(c4, address=f"[::1]:{c4.server.port}")
        home, agent_id = enrolled_home(c, tmp_path / "home")
        assert c.server.doorbell is not None
        port = c.server.doorbell.port

        async def park() -> None:
            bell = await Doorbell.park(parse_address(c.address), port, c.fingerprint, home.key(), agent_id, 10.0)
            await bell.close()

        asyncio.run(park())
        deadline = time.monotonic() + 10
        while not (rows := c.store.list_audit(10, actor=agent_id, action="channel.park", outcome="ok")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert rows[0].peer.startswith("ipv6:[::1]:"), rows[0].peer
    finally:
        gen.close()


def test_a_doorbell_port_out_of_range_does_not_stop_the_agent(
    parking_collector: RunningCollector, tmp_path: Path
) -> None:
    """``ChannelAccepted.doorbell_port`` is a uint32 from the collector (trusted to ask, not
    to be well-formed): a port above 65535 raised OverflowError out of ``Parking.when_idle``,
    through ``_session`` and ``_serve``, and ended the service."""
    c = parking_collector
    assert c.server._channel is not None
    c.server._channel.parking = (70000, 1)  # what a faulty or hostile collector may offer
    home, agent_id = enrolled_home(c, tmp_path / "home")

    async def main() -> None:
        async with running(home) as (_service, task):
            await until("connected", lambda: c.server.router.session(agent_id) is not None)
            await asyncio.sleep(2.5)  # idle past park_after_s
            assert not task.done(), task.exception()
            assert c.server.router.session(agent_id) is not None  # still on its stream

    asyncio.run(main())
