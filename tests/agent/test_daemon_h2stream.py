"""The daemon's gRPC stream over h2, against grpcio's own server on loopback.

The peer is a real ``grpc.aio`` server (the library the collector is built on) with a
handler of raw bytes, so each protocol path — messages larger than a flow-control window,
trailers, trailers-only refusals, percent-encoded details, resets, a closed connection, a
peer that stops answering pings — is exercised on the wire. The collector's own Channel
service is exercised through this client by tests/e2e/test_live.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.daemon.h2stream import MAX_MESSAGE, BidiStream, Deframer, RpcError, frame
from agent.errors import TransportError
from agent.transport import parse_address
from collector.tls import TlsMaterial, ensure_self_signed

# -- framing: the collector's bytes are untrusted ---------------------------------------


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_deframer_yields_the_messages_however_the_bytes_are_split(messages: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(frame(m) for m in messages)
    deframer, out, at, i = Deframer(), [], 0, 0
    while at < len(wire):
        step = cuts[i % len(cuts)]
        out += deframer.feed(wire[at : at + step])
        at, i = at + step, i + 1
    assert out == messages
    assert deframer.pending == 0


@given(st.binary(max_size=2000), st.integers(0, 4096))
def test_deframer_takes_any_bytes_or_says_what_is_wrong_where(data: bytes, limit: int) -> None:
    deframer = Deframer(limit)
    try:
        for message in deframer.feed(data):
            assert len(message) <= limit
    except RpcError as exc:
        assert exc.code in {"INTERNAL", "RESOURCE_EXHAUSTED"}
        assert "at byte" in exc.details


def test_deframer_refuses_compressed_oversized_and_unknown_flags() -> None:
    with pytest.raises(RpcError, match=r"INTERNAL: message header at byte 6 .*compressed"):
        Deframer().feed(frame(b"a") + b"\x01\x00\x00\x00\x01b")
    with pytest.raises(RpcError, match=r"RESOURCE_EXHAUSTED: .* 11 bytes exceeds the 10 byte limit"):
        Deframer(10).feed(frame(b"x" * 11))
    with pytest.raises(RpcError, match="flag byte 0x07"):
        Deframer().feed(b"\x07\x00\x00\x00\x00")


# -- on the wire, against grpc.aio ------------------------------------------------------

Handler = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncIterator[bytes]]


async def _chat(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """``echo:X`` → X; ``big:N`` → N bytes; ``end`` → OK; ``fail`` → ALREADY_EXISTS; ``reset`` → abort mid-call."""
    async for request in requests:
        if request.startswith(b"echo:"):
            yield request[5:]
        elif request.startswith(b"big:"):
            yield bytes(range(256)) * (int(request[4:]) // 256) + b"!" * (int(request[4:]) % 256)
        elif request == b"end":
            return
        elif request == b"fail":
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "a stream exists: déjà vu, 100% sure")


async def _refuse(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not you")
    yield b""  # pragma: no cover - makes this a generator


class Peer:
    def __init__(self, tls: TlsMaterial, port: int, server: grpc.aio.Server, seen: list[str]) -> None:
        self.tls, self.port, self.server, self.seen = tls, port, server, seen
        self.address = parse_address(f"127.0.0.1:{port}")

    async def handlers_ended(self, within_s: float = 5.0) -> int:
        """How many of the server's call handlers have ended, once one has (or the time is up)."""
        deadline = time.monotonic() + within_s
        while not self.seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return len(self.seen)

    async def open(self, path: str = "/test.Peer/Chat", **kwargs: Any) -> BidiStream:
        return await BidiStream.open(self.address, path, pin=self.tls.fingerprint, user_agent="test", **kwargs)


@contextlib.asynccontextmanager
async def _peer(tmp_path: Path) -> AsyncIterator[Peer]:
    tls = ensure_self_signed(tmp_path / "tls")
    seen: list[str] = []

    def wrap(handler: Handler) -> Handler:
        async def run(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            context.add_done_callback(lambda ctx: seen.append("cancelled" if ctx.cancelled() else "done"))
            async for out in handler(requests, context):
                yield out

        return run

    server = grpc.aio.server(options=[("grpc.http2.min_ping_interval_without_data_ms", 20_000)])
    handlers = {
        "Chat": grpc.stream_stream_rpc_method_handler(wrap(_chat)),
        "Refuse": grpc.stream_stream_rpc_method_handler(wrap(_refuse)),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Peer", handlers),))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)]))
    await server.start()
    try:
        yield Peer(tls, port, server, seen)
    finally:
        await server.stop(0)


def _run(tmp_path: Path, body: Callable[[Peer], Awaitable[None]]) -> None:
    async def main() -> None:
        async with _peer(tmp_path) as peer:
            await body(peer)

    asyncio.run(main())


def test_messages_both_ways_including_ones_larger_than_the_flow_control_window(tmp_path: Path) -> None:
    async def body(peer: Peer) -> None:
        call = await peer.open()
        try:
            for size in (0, 1, 70_000, 1_000_000, MAX_MESSAGE - 5):  # the window starts at 64 KiB
                await call.write(b"big:%d" % size)
                got = await call.read()
                assert got is not None and len(got) == size
            payload = bytes(range(256)) * 8192  # 2 MiB sent: waits for the server's window
            await call.write(b"echo:" + payload)
            assert await call.read() == payload
            await call.write(b"end")
            assert await call.read() is None
            assert await call.read() is None  # the end stays the end
        finally:
            await call.close()

    _run(tmp_path, body)


def test_an_error_status_arrives_with_its_code_and_decoded_details(tmp_path: Path) -> None:
    async def body(peer: Peer) -> None:
        call = await peer.open()
        try:
            await call.write(b"echo:hi")
            assert await call.read() == b"hi"
            await call.write(b"fail")
            with pytest.raises(RpcError) as info:
                await call.read()
            assert info.value.code == "ALREADY_EXISTS"
            assert info.value.details == "a stream exists: déjà vu, 100% sure"
            with pytest.raises(RpcError, match="ALREADY_EXISTS"):
                await call.write(b"echo:after the end")
        finally:
            await call.close()

        refused = await peer.open("/test.Peer/Refuse")
        try:
            with pytest.raises(RpcError, match="PERMISSION_DENIED: not you"):
                await refused.read()
        finally:
            await refused.close()

        unknown = await peer.open("/test.Peer/Nothing")
        try:
            with pytest.raises(RpcError) as info:
                await unknown.read()
            assert info.value.code == "UNIMPLEMENTED"
        finally:
            await unknown.close()

    _run(tmp_path, body)


def test_an_oversized_message_ends_the_call_on_both_sides(tmp_path: Path) -> None:
    async def body(peer: Peer) -> None:
        call = await peer.open(max_message=1024)
        try:
            await call.write(b"big:2048")
            with pytest.raises(RpcError, match=r"RESOURCE_EXHAUSTED: .*2,048 bytes exceeds the 1,024 byte limit"):
                await call.read()
        finally:
            await call.close()
        assert await peer.handlers_ended() == 1  # the reset reached the server

    _run(tmp_path, body)


def test_close_ends_the_call_on_the_server(tmp_path: Path) -> None:
    async def body(peer: Peer) -> None:
        call = await peer.open()
        await call.write(b"echo:x")
        assert await call.read() == b"x"
        await call.close()
        with pytest.raises(RpcError, match="CANCELLED"):
            await call.read()
        assert await peer.handlers_ended() == 1

    _run(tmp_path, body)


def test_a_server_that_stops_ends_the_call_as_unavailable(tmp_path: Path) -> None:
    async def body(peer: Peer) -> None:
        call = await peer.open()
        try:
            await call.write(b"echo:x")
            assert await call.read() == b"x"
            await peer.server.stop(0)
            with pytest.raises(RpcError) as info:
                await asyncio.wait_for(call.read(), 10)
            assert info.value.code in {"UNAVAILABLE", "CANCELLED"}, info.value
        finally:
            await call.close()

    _run(tmp_path, body)


def test_pins_are_checked_before_anything_is_sent(tmp_path: Path) -> None:
    async def body(peer: Peer) -> None:
        with pytest.raises(TransportError, match="does not match the pinned sha256:00") as info:
            await BidiStream.open(peer.address, "/test.Peer/Chat", pin="sha256:" + "00" * 32, user_agent="t")
        assert info.value.code == "PIN_MISMATCH"
        # Without a pin, the system trust store does not know a self-signed collector.
        with pytest.raises(RpcError, match=r"UNAVAILABLE: cannot connect .*CERTIFICATE_VERIFY_FAILED"):
            await BidiStream.open(peer.address, "/test.Peer/Chat", pin=None, user_agent="t")

    _run(tmp_path, body)


def test_a_peer_that_stops_answering_pings_is_given_up(tmp_path: Path) -> None:
    """A TLS peer that speaks no HTTP/2 back: what a frozen collector or a dead NAT path looks like."""
    tls = ensure_self_signed(tmp_path / "tls")
    (tmp_path / "k.pem").write_bytes(tls.key_pem)
    (tmp_path / "c.pem").write_bytes(tls.cert_pem)

    async def main() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
        ctx.set_alpn_protocols(["h2"])
        held: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)
            while await reader.read(65536):
                pass

        server = await asyncio.start_server(silent, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            call = await BidiStream.open(
                parse_address(f"127.0.0.1:{port}"), "/x/y", pin=tls.fingerprint, user_agent="t",
                keepalive_s=0.2, keepalive_timeout_s=0.3,
            )  # fmt: skip
            try:
                with pytest.raises(RpcError, match=r"UNAVAILABLE: keepalive: a ping went unanswered for 0.3 s"):
                    await asyncio.wait_for(call.read(), 10)
            finally:
                await call.close()
        finally:
            for writer in held:
                writer.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
