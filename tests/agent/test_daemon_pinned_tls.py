"""The daemon's pinned TLS context: built once, so a reconnect is one TLS handshake, not two.

Against grpcio servers on loopback, through a TCP relay that counts the connections the
daemon's transport opens (the certificate fetch is a connection of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agent.daemon.h2stream import BidiStream, RpcError
from agent.errors import TransportError
from agent.transport import parse_address
from collector.tls import TlsMaterial, ensure_self_signed


async def _echo(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def _server(tls: TlsMaterial) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    handlers = {"Echo": grpc.stream_stream_rpc_method_handler(_echo)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Pin", handlers),))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)]))
    await server.start()
    return server, port


class Relay:
    """127.0.0.1:port → the current backend port, counting the connections accepted."""

    def __init__(self) -> None:
        self.backend = 0
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


def test_a_pinned_collector_costs_one_connection_per_stream_and_a_new_certificate_is_noticed(
    tmp_path: Path,
) -> None:
    first_tls = ensure_self_signed(tmp_path / "a")
    other_tls = ensure_self_signed(tmp_path / "b")
    assert first_tls.fingerprint != other_tls.fingerprint

    async def main() -> None:
        relay = Relay()
        await relay.start()
        server, relay.backend = await _server(first_tls)
        address = parse_address(f"127.0.0.1:{relay.port}")
        try:
            for i in range(3):
                call = await BidiStream.open(address, "/test.Pin/Echo", pin=first_tls.fingerprint, user_agent="t")
                await call.write(b"hi %d" % i)
                assert await call.read() == b"hi %d" % i
                await call.close()
            # The certificate was fetched once (one connection), then one connection per stream.
            assert relay.accepted == 1 + 3
            # The collector now presents another certificate: the cached context refuses it,
            # and the next attempt fetches it and says that it is not the pinned one.
            await server.stop(0)
            server, relay.backend = await _server(other_tls)
            with pytest.raises(RpcError, match="CERTIFICATE_VERIFY_FAILED"):
                await BidiStream.open(address, "/test.Pin/Echo", pin=first_tls.fingerprint, user_agent="t")
            with pytest.raises(TransportError, match="does not match the pinned") as info:
                await BidiStream.open(address, "/test.Pin/Echo", pin=first_tls.fingerprint, user_agent="t")
            assert info.value.code == "PIN_MISMATCH"
        finally:
            await server.stop(0)
            await relay.stop()

    asyncio.run(main())
