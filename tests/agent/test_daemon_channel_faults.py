"""The daemon's Channel against peers that misbehave, stall, go away or vanish.

The peers are real: a raw TLS server speaking HTTP/2 through ``h2`` in server mode (to
send exactly the frames a misbehaving or gracefully closing peer sends, in one write), a
``grpc.aio`` server whose handler never answers, and the real collector behind a loopback
TCP relay that can stop forwarding (what a laptop going to sleep or a NAT forgetting its
mapping looks like to both ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from hyperframe.frame import PingFrame

from agent.daemon import AgentService, DaemonOptions
from agent.daemon.h2stream import BidiStream, RpcError, frame
from agent.daemon.worker import CollectionWorker
from agent.state import AgentHome, Enrollment
from agent.transport import enroll, open_channel, parse_address
from collector.server import ServerConfig
from collector.tls import TlsMaterial, ensure_self_signed
from protos import collector_pb2, collector_pb2_grpc
from tests.collector.conftest import RunningCollector, _run_server

# -- a raw HTTP/2 peer ------------------------------------------------------------------

# Called once per request stream with the server's h2 connection; whatever it queues on
# the connection, plus the raw bytes it returns, goes out in ONE write (one TLS record), so
# the client reads it in one piece.
OnRequest = Callable[[h2.connection.H2Connection, int], bytes]


class RawPeer:
    def __init__(self, tls: TlsMaterial, port: int) -> None:
        self.tls = tls
        self.address = parse_address(f"127.0.0.1:{port}")
        self.received = bytearray()  # every byte any client sent after its TLS handshake

    async def open(self, **kwargs: Any) -> BidiStream:
        return await BidiStream.open(self.address, "/t.P/C", pin=self.tls.fingerprint, user_agent="t", **kwargs)


@contextlib.asynccontextmanager
async def _raw_peer(tmp_path: Path, on_request: OnRequest, alpn: tuple[str, ...] = ("h2",)) -> AsyncIterator[RawPeer]:
    tls = ensure_self_signed(tmp_path / "tls")
    (tmp_path / "k.pem").write_bytes(tls.key_pem)
    (tmp_path / "c.pem").write_bytes(tls.cert_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    ctx.set_alpn_protocols(list(alpn))
    writers: list[asyncio.StreamWriter] = []
    peer: RawPeer | None = None

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        config = h2.config.H2Configuration(
            client_side=False, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        with contextlib.suppress(OSError, h2.exceptions.ProtocolError):
            while data := await reader.read(65536):
                assert peer is not None
                peer.received += data
                extra = b""
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        extra += on_request(conn, event.stream_id)
                writer.write(conn.data_to_send() + extra)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    peer = RawPeer(tls, server.sockets[0].getsockname()[1])
    try:
        yield peer
    finally:
        for writer in writers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


def _headers(*pairs: tuple[str, str | bytes]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v if isinstance(v, bytes) else v.encode()) for n, v in pairs]


# -- a graceful GOAWAY: the messages that came with it are still read -------------------


def test_a_message_read_together_with_a_graceful_goaway_is_still_delivered(tmp_path: Path) -> None:
    """grpc-core's graceful GOAWAY (max_connection_age, server stop) is GOAWAY(NO_ERROR,
    last-stream-id 2^31-1) followed at once by a PING. h2 refuses every frame after a
    GOAWAY and would drop the events of the whole read with it, including a
    SnapshotRequest sent just before: frames go to h2 one at a time."""

    def respond(conn: h2.connection.H2Connection, sid: int) -> bytes:
        conn.send_headers(sid, _headers((":status", "200"), ("content-type", "application/grpc")))
        conn.send_data(sid, frame(b"snapshot request"))
        conn.close_connection(error_code=0, last_stream_id=2**31 - 1)
        return PingFrame(0, opaque_data=b"graceful").serialize()

    async def main() -> None:
        async with _raw_peer(tmp_path, respond) as peer:
            call = await peer.open()
            try:
                assert await asyncio.wait_for(call.read(), 5) == b"snapshot request"
                with pytest.raises(RpcError, match="UNAVAILABLE"):
                    await asyncio.wait_for(call.read(), 5)
            finally:
                await call.close()

    asyncio.run(main())


# -- malformed trailers end the call with an error, never stall it ---------------------


@pytest.mark.parametrize(
    ("status", "message"),
    [
        pytest.param("9", b"\xff\xfe not UTF-8", id="grpc-message-not-utf8"),  # UnicodeDecodeError inside h2
        pytest.param("\u00b2", b"", id="grpc-status-superscript-two"),  # str.isdigit() is True, int() raises
        pytest.param("0" * 5000, b"", id="grpc-status-5000-digits"),  # int() refuses more than 4300 digits
    ],
)
def test_malformed_trailers_end_the_call_instead_of_stalling_it(tmp_path: Path, status: str, message: bytes) -> None:
    """A header value that is not UTF-8, or a grpc-status that is no status code, ends the
    call with an error at once; before, the receive task died on it and ``read()`` waited
    for the keepalive (40 s) and then blamed the network."""

    def respond(conn: h2.connection.H2Connection, sid: int) -> bytes:
        conn.send_headers(
            sid,
            _headers(
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", status),
                ("grpc-message", message),
            ),
            end_stream=True,
        )
        return b""

    async def main() -> None:
        async with _raw_peer(tmp_path, respond) as peer:
            call = await peer.open()  # the daemon's keepalive defaults: 30 s + 10 s
            try:
                with pytest.raises(RpcError):
                    await asyncio.wait_for(call.read(), 3)
            finally:
                await call.close()

    asyncio.run(main())


# -- a peer refused at TLS level (ALPN, pin) is sent no HTTP/2 --------------------------


def test_a_peer_that_refused_http2_is_sent_no_http2_bytes(tmp_path: Path) -> None:
    """Nothing HTTP/2 is sent before the TLS-level checks pass, not even a GOAWAY."""

    def respond(conn: h2.connection.H2Connection, sid: int) -> bytes:  # pragma: no cover - never reached
        return b""

    async def main() -> None:
        async with _raw_peer(tmp_path, respond, alpn=("http/1.1",)) as peer:
            with pytest.raises(RpcError, match="did not agree to HTTP/2"):
                await peer.open()
            await asyncio.sleep(0.3)
            assert bytes(peer.received) == b""

    asyncio.run(main())


# -- the handshake has a deadline, and stop() is honoured during it ---------------------


def _options(**kw: float) -> DaemonOptions:
    base: dict[str, float] = {"backoff_base_s": 0.05, "backoff_cap_s": 0.2, "worker_linger_s": 0.0}
    return DaemonOptions(**(base | kw))


@contextlib.asynccontextmanager
async def _stuck_collector(tmp_path: Path, calls: list[float]) -> AsyncIterator[AgentHome]:
    """A grpc.aio Channel that takes the hello and never answers it (a collector whose
    handler hangs on its database); keepalive pings are answered at any rate."""
    tls = ensure_self_signed(tmp_path / "tls")

    async def stuck(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        calls.append(time.monotonic())
        await anext(aiter(requests))  # the hello
        await asyncio.Event().wait()  # never challenged
        yield b""  # pragma: no cover - makes this a generator

    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 50),
            ("grpc.http2.max_ping_strikes", 0),  # any ping rate: keepalive works, it is not the problem
        ]
    )
    handler: Any = grpc.stream_stream_rpc_method_handler(stuck)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("casefile.v1.Channel", {"Connect": handler}),)
    )
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)]))
    await server.start()
    try:
        home = AgentHome(tmp_path / "home")
        home.save_enrollment(Enrollment("ag_stuck", f"127.0.0.1:{port}", tls.fingerprint, home.key().fingerprint))
        yield home
    finally:
        await server.stop(0)


async def _stop(service: AgentService, running: asyncio.Task[None], within: float) -> bool:
    """Stop the service; False if it did not stop within ``within`` s (it is then cancelled)."""
    service.stop()
    done, _ = await asyncio.wait({running}, timeout=within)
    if not done:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    return bool(done)


@pytest.mark.slow
def test_a_collector_that_never_answers_the_hello_is_dialled_again(tmp_path: Path) -> None:
    """grpc-core answers pings in C whatever the handler does, so keepalive cannot tell a
    collector whose handler is stuck (on its database, say) from a healthy one. The agent
    gives the handshake ``HANDSHAKE_TIMEOUT_S`` and dials again, perhaps to a healthy
    replica."""
    calls: list[float] = []

    async def main() -> None:
        async with _stuck_collector(tmp_path, calls) as home:
            service = AgentService(home, _options(keepalive_s=0.3, keepalive_timeout_s=0.5))
            running = asyncio.create_task(service.run())
            try:
                deadline = time.monotonic() + 25
                while len(calls) < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
            finally:
                await _stop(service, running, 5)
        assert len(calls) >= 2, "the agent waited 25 s for a challenge on a live but stuck stream"

    asyncio.run(main())


def test_stop_is_honoured_while_the_handshake_waits(tmp_path: Path) -> None:
    """SIGTERM during a handshake that does not finish stops the agent at once (before, it
    was ignored until systemd's SIGKILL)."""
    calls: list[float] = []

    async def main() -> None:
        async with _stuck_collector(tmp_path, calls) as home:
            service = AgentService(home, _options())  # the daemon's keepalive defaults
            running = asyncio.create_task(service.run())
            deadline = time.monotonic() + 10
            while not calls and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert calls, "the agent never dialled"
            stopped = await _stop(service, running, 3)
        assert stopped, "AgentService.run() still running 3 s after stop()"

    asyncio.run(main())


# -- after a silently dead connection, the agent's new stream takes over ----------------


class _Relay:
    """TCP relay on loopback; ``freeze`` makes the connections open now drop all bytes both
    ways and never close, like a path that died (NAT timeout, laptop suspended); new
    connections are relayed normally."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.frozen = False
        self._open: list[dict[str, Any]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        for conn in self._open:
            conn["frozen"] = True

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [writer, up_writer]
        conn: dict[str, Any] = {"frozen": False}
        self._open.append(conn)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if not conn["frozen"]:
                        dst.write(data)
                        await dst.drain()
            if not conn["frozen"]:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def close(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
def plain_collector(tmp_path: Path) -> Iterator[RunningCollector]:
    yield from _run_server(ServerConfig(address="127.0.0.1:0", data_dir=tmp_path / "collector"))


def test_after_a_silently_dead_connection_the_agent_gets_back_in(
    plain_collector: RunningCollector, tmp_path: Path
) -> None:
    """The agent's keepalive notices a dead path and dials again; the collector would notice
    only through its own keepalive. Its Probe of the old stream goes unanswered, so the new
    stream takes over, audited as ``channel.replace`` — not refused as a cloned machine. The keepalive
    is shortened here; the live-clone case (the probe is answered: refused) is in
    tests/e2e/test_live.py."""
    collector = plain_collector
    key_home = AgentHome(tmp_path / "home")
    key = key_home.key()
    with open_channel(parse_address(collector.address), ca_fingerprint=collector.fingerprint) as ch:
        agent_id = enroll(ch, token=collector.enroll_token(), key=key, hostname="sleepy", agent_version="t").agent_id

    def audit(outcome: str) -> list[Any]:
        return collector.store.list_audit(100, actor=agent_id, action="channel.connect", outcome=outcome)

    async def main() -> None:
        relay = _Relay(int(collector.address.rsplit(":", 1)[1]))
        port = await relay.start()
        key_home.save_enrollment(Enrollment(agent_id, f"127.0.0.1:{port}", collector.fingerprint, key.fingerprint))
        service = AgentService(key_home, _options(keepalive_s=1.0, keepalive_timeout_s=0.5))
        running = asyncio.create_task(service.run())
        try:
            deadline = time.monotonic() + 20
            while not await asyncio.to_thread(audit, "ok") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(await asyncio.to_thread(audit, "ok")) == 1
            relay.freeze()  # the path dies; neither end is told
            deadline = time.monotonic() + 10
            while len(await asyncio.to_thread(audit, "ok")) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            denied = [r.detail for r in await asyncio.to_thread(audit, "denied")]
            assert len(await asyncio.to_thread(audit, "ok")) >= 2, f"not back in after 10 s; refused {len(denied)}x"
            assert denied == []
            replaced = await asyncio.to_thread(
                collector.store.list_audit, 10, actor=agent_id, action="channel.replace", outcome="ok"
            )
            assert len(replaced) == 1 and "did not answer a probe" in replaced[0].detail
        finally:
            service.stop()
            await asyncio.wait_for(running, 10)
            await relay.close()

    asyncio.run(main())


# -- a snapshot does not wait behind the spool ------------------------------------------


def test_a_snapshot_does_not_wait_behind_the_spool_delivery(plain_collector: RunningCollector, tmp_path: Path) -> None:
    """The spool is delivered by a child of its own: with that delivery stuck (a large bundle
    crawling up a slow link, stood in for by a child that takes the request and never
    answers), an engineer's snapshot is still collected, uploaded and stored."""
    collector = plain_collector
    home = AgentHome(tmp_path / "home")
    key = home.key()
    with open_channel(parse_address(collector.address), ca_fingerprint=collector.fingerprint) as ch:
        agent_id = enroll(ch, token=collector.enroll_token(), key=key, hostname="busy", agent_version="t").agent_id
    home.save_enrollment(Enrollment(agent_id, collector.address, collector.fingerprint, key.fingerprint))
    undelivered = tmp_path / "big.tar.zst"
    undelivered.write_bytes(b"a bundle the collector has not seen yet")
    md = (("authorization", f"Bearer {collector.engineer_token()}"),)

    def snapshot() -> list[str]:
        spec = collector_pb2.SnapshotRequestSpec(host=agent_id, reason="while the spool drains")
        with collector.channel() as ch:
            events = collector_pb2_grpc.QueryStub(ch).RequestSnapshot(spec, metadata=md, timeout=60)
            return [e.state for e in events]

    async def main() -> list[str]:
        service = AgentService(home, _options())
        service.spool.add(undelivered, bundle_id="b-spooled", request_id="r-old", sha256="0" * 64)
        service.spool_worker = CollectionWorker(
            linger_s=30, command=(sys.executable, "-c", "import sys, time; sys.stdin.readline(); time.sleep(600)")
        )
        running = asyncio.create_task(service.run())
        try:
            deadline = time.monotonic() + 20
            while service.spool_worker.pid is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert service.spool_worker.pid is not None, "the spool delivery never started"
            return await asyncio.wait_for(asyncio.to_thread(snapshot), 60)
        finally:
            await _stop(service, running, 15)

    states = asyncio.run(main())
    assert states[-1] == "done", states
