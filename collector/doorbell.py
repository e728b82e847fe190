"""The doorbell listener: where idle agents park instead of holding their Channel stream.

An idle Channel stream costs ~87 KiB here, nearly all grpc-core's (its TLS buffers,
connection and call); a parked agent costs ~22 at 10,000 (``benchmarks/bench_channels.py --park``).
The Channel's ``ChannelAccepted`` tells an agent this port and how long to stay idle
before parking; the agent then connects here, proves its key over a fresh nonce
(``agent.transport.doorbell``), closes its stream, and is *parked*: online for engineers,
holding one small TLS connection. A request for it rings (one frame); the agent opens its
Channel again, which drains what is queued (``ChannelService.Connect``), and leaves the
doorbell once that stream is accepted, so it is always reachable one way or the other.
On PostgreSQL the router records which replica holds each doorbell (``agent_doorbells``,
``collector.live_pg``): a request written on another replica reaches this one by its
NOTIFY and rings here; the agent's Channel may then open on any replica.

Why not asyncio's ``ssl=``: its ``SSLProtocol`` keeps a 256 KiB read buffer per
connection. TLS is done here over two ``ssl.MemoryBIO``s, and OpenSSL releases its record
buffers while a connection is idle (CPython sets ``SSL_MODE_RELEASE_BUFFERS``), which is
what keeps a parked agent small. TLS 1.3 only; the certificate is the gRPC port's, so the
agents' pin holds for both.

Bounds: at most ``MAX_HANDSHAKES`` connections between accept and PARKED, at most
``MAX_HANDSHAKES_PER_HOST`` of them from one address (more are closed at once, before TLS:
the agent stays on its Channel and tries again later), each given ``FIRST_BYTE_TIMEOUT_S``
to start its TLS handshake and ``HANDSHAKE_TIMEOUT_S`` in all; an agent never sends after
its proof, so any byte after it ends the connection. Liveness at rest is TCP keepalive (the
kernel's, no timer here): a peer gone without a word is found in about
``agent.transport.doorbell.KEEPALIVE_IDLE_S`` + 4 x ``KEEPALIVE_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from concurrent.futures import Executor
from pathlib import Path

from agent.keys import PublicKey
from agent.transport.channel_proof import NONCE_BYTES, doorbell_message
from agent.transport.doorbell import (
    NONCE,
    PARKED,
    PROOF,
    REFUSED,
    RING,
    DoorbellError,
    FrameReader,
    frame,
    keep_alive,
    parse_proof,
)
from collector.interceptors import RateLimitedLog
from collector.live_router import LiveRouter
from collector.services.channel_log import ChannelLog, agent_entry
from collector.storage import Store
from collector.storage.errors import NotFound

__all__ = ["HANDSHAKE_TIMEOUT_S", "MAX_HANDSHAKES", "Bell", "DoorbellServer"]

log = logging.getLogger("casefile.collector.doorbell")

HANDSHAKE_TIMEOUT_S = 10.0
FIRST_BYTE_TIMEOUT_S = 3.0
MAX_HANDSHAKES = 128
# Of those, from one address: a client holding silent connections cannot take every slot
# from one host (agents behind one NAT share an address: a bound, not a block, for them).
MAX_HANDSHAKES_PER_HOST = 32


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.num_tickets = 0  # no resumption offered: nothing to keep per agent
    return ctx


class Bell(asyncio.Protocol):
    """One agent's doorbell connection: TLS over memory BIOs, the proof, then rings."""

    __slots__ = (
        "_greeted", "_heard", "_host", "_inc", "_out", "_reader", "_timer", "_tls", "agent_id", "nonce", "peer",
        "rung", "server", "transport",
    )

    def __init__(self, server: DoorbellServer) -> None:
        self.server = server
        self.agent_id = ""
        self.nonce = b""
        self.peer = ""
        self.rung = False
        self._greeted = False  # the handshake done and the one NONCE of this connection sent
        self._heard = False  # a first byte came
        self._host = ""  # the peer's address, for its share of the handshake slots
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        addr = transport.get_extra_info("peername")
        if isinstance(addr, tuple):  # as grpc names the Channel's peers
            self.peer = f"ipv6:[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"ipv4:{addr[0]}:{addr[1]}"
        else:
            self.peer = str(addr)
        host = addr[0] if isinstance(addr, tuple) else str(addr)
        server = self.server
        if server.handshaking >= server.max_handshakes or server.by_host.get(host, 0) >= server.max_per_host:
            server.busy_refusals += 1
            server.busy_log.warning(
                "doorbell from %s closed: %d handshakes in flight, %d from its address (agents stay on their Channel)",
                self.peer, server.handshaking, server.by_host.get(host, 0),
            )
            self.transport.abort()
            return
        server.handshaking += 1
        server.by_host[host] = server.by_host.get(host, 0) + 1
        self._host = host
        keep_alive(transport.get_extra_info("socket"))
        self._inc, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = server.ctx.wrap_bio(self._inc, self._out, server_side=True)
        self._reader = FrameReader()
        # A client says something at once (its TLS ClientHello); a silent one loses its slot sooner.
        self._timer = asyncio.get_running_loop().call_later(server.first_byte_timeout_s, self._late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._handshake_over()
        if self.agent_id:
            self.server.left(self)

    def data_received(self, data: bytes) -> None:
        if self.server.closing:
            self.transport.abort()
            return
        if not self._heard and self._timer is not None:
            self._heard = True
            self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(self.server.handshake_timeout_s, self._late)
        self._inc.write(data)
        try:
            if not self._greeted:
                try:
                    self._tls.do_handshake()
                except ssl.SSLWantReadError:
                    self._flush()
                    return
                self._greeted = True
                self.nonce = secrets.token_bytes(NONCE_BYTES)
                self._send(NONCE, self.nonce)
            while True:
                try:
                    chunk = self._tls.read(1024)
                except ssl.SSLWantReadError:
                    break
                if not chunk:  # close_notify: the agent left
                    self._flush()
                    self.transport.close()
                    return
                if self.agent_id:  # even a piece of a frame: nothing comes after the proof
                    raise DoorbellError("data after the proof")
                for kind, payload in self._reader.feed(chunk):
                    self._frame(kind, payload)
        except (ssl.SSLError, DoorbellError) as exc:
            self.server.bad_log.warning("doorbell from %s closed: %s", self.peer, exc)
            self._flush()
            self.transport.abort()
            return
        self._flush()

    # -- the protocol --------------------------------------------------------------

    def _frame(self, kind: int, payload: bytes) -> None:
        if kind != PROOF or not self.nonce:
            # An agent sends one proof and nothing after it.
            raise DoorbellError(f"unexpected frame type {kind} {'after the proof' if self.agent_id else ''}".strip())
        agent_id, signature = parse_proof(payload)
        nonce, self.nonce = self.nonce, b""
        task = asyncio.get_running_loop().create_task(self.server.admit(self, agent_id, signature, nonce))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    def parked(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self._handshake_over()
        self._send(PARKED)
        self._flush()

    def refuse(self, why: str) -> None:
        with contextlib.suppress(ssl.SSLError, DoorbellError):
            self._send(REFUSED, why.encode("utf-8")[:400])
            self._flush()
        self.transport.close()

    def ring(self) -> None:
        """Tell the parked agent to open its Channel: once (it reads no more of its doorbell;
        a ring for each request would pile up unread here)."""
        if self.rung or self.transport.is_closing():
            return
        self.rung = True
        with contextlib.suppress(ssl.SSLError):
            self._send(RING)
            self._flush()

    def close(self) -> None:
        self.transport.close()

    def _send(self, kind: int, payload: bytes = b"") -> None:
        self._tls.write(frame(kind, payload))

    def _flush(self) -> None:
        if self._out.pending and not self.transport.is_closing():
            self.transport.write(self._out.read())

    def _handshake_over(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._free_slot()

    def _free_slot(self) -> None:
        server = self.server
        server.handshaking -= 1
        left = server.by_host.get(self._host, 1) - 1
        if left > 0:
            server.by_host[self._host] = left
        else:
            server.by_host.pop(self._host, None)

    def _late(self) -> None:
        self._timer = None
        self._free_slot()
        limit = self.server.handshake_timeout_s if self._heard else self.server.first_byte_timeout_s
        what = "no proof" if self._heard else "not a byte"
        log.info("doorbell from %s closed: %s within %g s", self.peer, what, limit)
        self.transport.abort()


class DoorbellServer:
    """The listener; parked bells are registered with the live router (``LiveRouter.park``)."""

    def __init__(
        self,
        store: Store,
        router: LiveRouter,
        ctx: ssl.SSLContext,
        channel_log: ChannelLog,
        executor: Executor,
        max_handshakes: int = MAX_HANDSHAKES,
    ) -> None:
        self.store = store
        self.router = router
        self.ctx = ctx
        self._log = channel_log
        self._executor = executor
        self.max_handshakes = max_handshakes
        self.handshake_timeout_s = HANDSHAKE_TIMEOUT_S
        self.first_byte_timeout_s = FIRST_BYTE_TIMEOUT_S
        self.max_per_host = MAX_HANDSHAKES_PER_HOST
        self.by_host: dict[str, int] = {}  # handshakes in flight per peer address
        self.handshaking = 0
        self.busy_refusals = 0
        self.closing = False
        self.busy_log = RateLimitedLog()
        self.bad_log = RateLimitedLog()
        self.tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Bell(self), host, port, backlog=4096, reuse_port=False
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def admit(self, bell: Bell, agent_id: str, signature: bytes, nonce: bytes) -> None:
        """Check the proof against the agent's enrolled key; park it or refuse it (audited)."""
        loop = asyncio.get_running_loop()
        try:
            agent = await loop.run_in_executor(self._executor, self.store.get_agent, agent_id)
        except NotFound:
            await self._audit("", bell.peer, "denied", f"doorbell: unknown agent {agent_id!r}")
            bell.refuse(f"unknown agent {agent_id!r}: enroll it first")
            return
        except Exception as exc:
            log.warning("doorbell from %s: store unavailable (%s)", bell.peer, exc)
            bell.refuse("collector store unavailable; stay on the Channel")
            return
        key = PublicKey(agent.public_key)
        if not key.verify(signature, doorbell_message(nonce, agent.id)):
            await self._audit(agent.id, bell.peer, "denied", "doorbell proof not signed by the agent's key")
            bell.refuse(f"doorbell proof not signed by the key of agent {agent.id} ({key.fingerprint})")
            return
        if agent.case_id is not None:
            await self._audit(agent.id, bell.peer, "denied", "doorbell: a case-token identity")
            bell.refuse(f"agent {agent.id} is a case-token identity: doorbells are for enrolled agents")
            return
        if bell.transport.is_closing() or self.closing:
            return
        try:
            await self.router.park(agent.id, bell)
        except Exception as exc:
            # The cause stays in this log; the agent, a remote peer, is told only that.
            log.warning("agent %s could not park (%s)", agent.id, exc)
            bell.refuse("could not park: the collector could not record it; stay on the Channel")
            return
        if bell.transport.is_closing():  # gone while its row was written
            self.router.unpark(agent.id, bell)
            return
        bell.parked(agent.id)
        log.info("agent %s (%s) parked from %s", agent.id, agent.hostname, bell.peer)
        with contextlib.suppress(Exception):
            await self._audit(agent.id, bell.peer, "ok", f"{agent.hostname} parked", seen=True)

    def left(self, bell: Bell) -> None:
        self.router.unpark(bell.agent_id, bell)

    async def _audit(self, agent_id: str, peer: str, outcome: str, detail: str, seen: bool = False) -> None:
        entry = agent_entry(agent_id, peer, outcome, detail, action="channel.park")
        await self._log.record(seen=agent_id if seen else None, audit=entry)

    async def stop(self) -> None:
        """Close the listener and every bell: parked agents go back to their Channel (to the
        next process, with their backoff)."""
        self.closing = True
        if self._server is not None:
            self._server.close()
            for bell in self.router.bells():
                bell.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
