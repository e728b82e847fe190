"""Serving the console: uvicorn in the collector's own event loop, HTTPS only.

The socket is bound here (so an address in use is refused with the collector's own
message, before anything is served, instead of uvicorn exiting the process), and uvicorn
is told not to take the process's signals: the collector's CLI owns SIGINT/SIGTERM and
stops the console with the gRPC server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from pathlib import Path

import uvicorn

from agent.transport.connect import parse_address
from collector.listen import ListenError, why_not_listening
from collector.live import LiveRouter
from collector.storage import BlobStore, Store
from collector.web import fleet, hunts, pages, work
from collector.web.app import Console

__all__ = ["ConsoleServer"]

log = logging.getLogger("casefile.collector.web")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the collector handles signals; uvicorn must not install its own


class ConsoleServer:
    """Start with :meth:`start` (returns the bound port), stop with :meth:`stop`."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        router: LiveRouter | None,
        address: str,
        tls: tuple[Path, Path],
        cache_dir: Path,
    ) -> None:
        """``tls``: the certificate and key files; ``cache_dir``: the log viewer's indexes."""
        self.address = address
        self.console = Console(store, blobs, router, cache_dir)
        self.app = self.console.asgi(
            [
                *pages.routes(self.console), *fleet.routes(self.console), *hunts.routes(self.console),
                *work.routes(self.console),
            ]
        )
        self._cert, self._key = tls
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        listen = parse_address(self.address, listen=True)
        try:
            sock = socket.create_server((listen.host, listen.port), family=_family(listen.host), reuse_port=False)
        except OSError:
            reason = why_not_listening(listen.host, listen.port, "--web-address")
            raise ListenError(f"{self.address} (console)", reason) from None
        # ``create_server`` leaves the socket's protocol number 0, and asyncio sets TCP_NODELAY
        # only on connections of a socket whose ``proto`` says TCP: without it a response's
        # headers and body (two TLS records) waited out the browser's delayed ACK, ~40 ms on
        # every page. Wrapped again from its descriptor, the socket reports IPPROTO_TCP.
        sock = socket.socket(fileno=sock.detach())
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app, ssl_certfile=str(self._cert), ssl_keyfile=str(self._key), lifespan="off", log_config=None,
            access_log=False, server_header=False, proxy_headers=False, timeout_graceful_shutdown=5,
        )
        server = self._server = _Server(config)
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="casefile-console")
        while not server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise ListenError(f"{self.address} (console)", "the console stopped while starting")
            await asyncio.sleep(0.01)
        log.info("console on https://%s:%d/", listen.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = None
        self._task = None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
