"""Prototype, for measurement only: idle agents parked on a TLS "doorbell" instead of a gRPC stream.

Not the collector. An agent whose Channel is idle would hold only a tiny TLS connection
that carries a "ring" frame; on a ring it opens its normal gRPC Channel and takes the
request. This measures what one parked connection costs the server that holds it.

The server (this script with ``--serve``, one process) is a plain ``loop.create_server``
on loopback whose Protocol does TLS 1.3 itself with ``SSLContext.wrap_bio`` and two
``ssl.MemoryBIO``s (not asyncio's ``ssl=``, whose ``SSLProtocol`` keeps a 256 KiB read
buffer per connection), with the collector's own self-signed certificate
(``collector.tls.ensure_self_signed``). After the handshake the server sends a fresh
nonce; the client answers with its agent id and an Ed25519 signature (``agent.keys``)
over ``b"casefile-doorbell-v1\\n" + nonce + b"\\n" + agent_id``, which the server checks
with the key enrolled for that agent in the collector's store (SQLite, looked up on the
loop), then the connection idles. On a ring (one frame) the client answers (one frame).

The clients (``--client-processes`` processes, asyncio ``ssl``) each hold their share of
``--clients`` connections. Reported: the server's RSS before any client and with all
parked after ``--idle-seconds`` (the difference / N is the memory per parked agent), its
CPU at rest, and the time from ring to answer as the server sees it for ``--ring-sample``
connections, rung one after another, then all at once. Variations: ``--no-release-buffers``
(clears OpenSSL's ``SSL_MODE_RELEASE_BUFFERS``, which CPython sets, on each connection
through ctypes), ``--compression`` (clears ``OP_NO_COMPRESSION``), ``--num-tickets``
(TLS 1.3 session tickets sent after the handshake), ``--gc-freeze``.

    flock /work/bench.lock .venv/bin/python benchmarks/proto_doorbell.py --clients 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import math
import random
import resource
import secrets
import shutil
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import psutil
from simagent import enroll, sim_key

from agent.keys import PublicKey, SigningKey
from agent.transport.connect import PINNED_TARGET_NAME
from collector.server import default_db_url
from collector.storage import NotFound, Store
from collector.tls import ensure_self_signed

FRAME = struct.Struct(">BH")  # type, payload length
NONCE, AUTH, OK, RING, ANSWER = 1, 2, 3, 4, 5
CONTEXT = b"casefile-doorbell-v1\n"
SIG_BYTES = 64
SSL_CTRL_MODE, SSL_CTRL_CLEAR_MODE, SSL_MODE_RELEASE_BUFFERS = 33, 78, 0x10


KEY_LABEL = b"bench-doorbell"  # the simulated agents' keys: sim_key(KEY_LABEL, i)


def _key(i: int) -> SigningKey:
    return sim_key(KEY_LABEL, i)


def _signed(nonce: bytes, agent_id: str) -> bytes:
    return CONTEXT + nonce + b"\n" + agent_id.encode()


def _frame(kind: int, payload: bytes = b"") -> bytes:
    return FRAME.pack(kind, len(payload)) + payload


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))


def _libssl() -> Any:
    path = next(line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "/libssl.so" in line)
    lib = ctypes.CDLL(path)
    lib.SSL_ctrl.restype = ctypes.c_long
    lib.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    return lib


def _clear_release_buffers(lib: Any, obj: ssl.SSLObject) -> None:
    # CPython 3.11's PySSLSocket: PyObject_HEAD (16 bytes), Socket, then the SSL *.
    ptr = ctypes.c_void_p.from_address(id(obj._sslobj) + 24).value  # type: ignore[attr-defined]
    mode = lib.SSL_ctrl(ptr, SSL_CTRL_MODE, 0, None)
    if not mode & SSL_MODE_RELEASE_BUFFERS:
        raise SystemExit(f"unexpected SSL mode {mode:#x}: not the SSL pointer")
    lib.SSL_ctrl(ptr, SSL_CTRL_CLEAR_MODE, SSL_MODE_RELEASE_BUFFERS, None)


class Bell(asyncio.Protocol):
    """One parked agent's connection, TLS done here over two memory BIOs."""

    __slots__ = ("agent_id", "answer", "buf", "inc", "nonce", "out", "server", "tls", "transport")

    def __init__(self, server: BellServer) -> None:
        self.server = server
        self.agent_id = ""
        self.nonce = b""
        self.buf = b""
        self.answer: asyncio.Future[float] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = self.server.ctx.wrap_bio(self.inc, self.out, server_side=True)
        if self.server.libssl is not None:
            _clear_release_buffers(self.server.libssl, self.tls)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server.parked.get(self.agent_id) is self:
            del self.server.parked[self.agent_id]

    def data_received(self, data: bytes) -> None:
        self.inc.write(data)
        try:
            if not self.nonce and not self.agent_id:
                try:
                    self.tls.do_handshake()
                except ssl.SSLWantReadError:
                    return self._flush()
                self.nonce = secrets.token_bytes(32)
                self._send(NONCE, self.nonce)
            while True:
                try:
                    chunk = self.tls.read(4096)
                except ssl.SSLWantReadError:
                    break
                if not chunk:
                    self.transport.close()
                    return None
                self.buf += chunk
            self._frames()
        except (ssl.SSLError, ValueError, NotFound):
            self.transport.abort()
            return None
        self._flush()

    def _frames(self) -> None:
        while len(self.buf) >= FRAME.size:
            kind, n = FRAME.unpack_from(self.buf)
            if len(self.buf) < FRAME.size + n:
                return
            payload, self.buf = self.buf[FRAME.size : FRAME.size + n], self.buf[FRAME.size + n :]
            if kind == AUTH and self.nonce:
                agent_id = payload[SIG_BYTES:].decode()
                record = self.server.store.get_agent(agent_id)
                if not PublicKey(record.public_key).verify(payload[:SIG_BYTES], _signed(self.nonce, agent_id)):
                    raise ValueError("bad signature")
                self.agent_id, self.nonce = agent_id, b""
                self.server.parked[agent_id] = self
                self._send(OK)
            elif kind == ANSWER and self.answer is not None and not self.answer.done():
                self.answer.set_result(time.perf_counter())
            else:
                raise ValueError(f"unexpected frame {kind}")

    def _send(self, kind: int, payload: bytes = b"") -> None:
        self.tls.write(_frame(kind, payload))

    def _flush(self) -> None:
        if self.out.pending:
            self.transport.write(self.out.read())

    def ring(self) -> asyncio.Future[float]:
        self.answer = asyncio.get_running_loop().create_future()
        self._send(RING)
        self._flush()
        return self.answer


class BellServer:
    def __init__(self, ctx: ssl.SSLContext, store: Store, libssl: Any) -> None:
        self.ctx, self.store, self.libssl = ctx, store, libssl
        self.parked: dict[str, Bell] = {}

    async def rings(self, k: int, together: bool) -> list[float]:
        sample = random.Random(1).sample(list(self.parked.values()), min(k, len(self.parked)))

        async def one(bell: Bell) -> float:
            t0 = time.perf_counter()
            return (await asyncio.wait_for(bell.ring(), 10.0) - t0) * 1000

        if together:
            return list(await asyncio.gather(*(one(b) for b in sample)))
        return [await one(b) for b in sample]

    async def command(self, line: str) -> dict[str, Any]:
        cmd, *arg = line.split()
        if cmd == "stats":
            traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
            return {"parked": len(self.parked), "tls_sessions_cached": self.ctx.session_stats()["number"],
                    "traced": traced}
        if cmd in ("ring", "burst"):
            return {"ms": await self.rings(int(arg[0]), cmd == "burst")}
        if cmd == "trim":
            return {"trimmed": ctypes.CDLL("libc.so.6").malloc_trim(0)}
        raise ValueError(cmd)


async def serve(args: argparse.Namespace) -> None:
    _raise_nofile()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(default_db_url(args.data_dir))
    tls = ensure_self_signed(args.data_dir / "tls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(args.data_dir / "tls" / "collector.crt"), str(args.data_dir / "tls" / "collector.key"))
    if args.compression:
        ctx.options &= ~ssl.OP_NO_COMPRESSION
    if args.num_tickets >= 0:
        ctx.num_tickets = args.num_tickets
    server = BellServer(ctx, store, _libssl() if args.no_release_buffers else None)
    key = SigningKey.generate()  # warm the Ed25519 path and the store's query before the baseline
    key.public.verify(key.sign(b"warm"), b"warm")
    with contextlib.suppress(NotFound):  # an unknown agent: only the query's first run matters
        store.get_agent("warm-up")
    srv = await asyncio.get_running_loop().create_server(lambda: Bell(server), "127.0.0.1", 0, backlog=4096)
    port = srv.sockets[0].getsockname()[1]
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    if args.tracemalloc:
        tracemalloc.start()
    print(json.dumps({"port": port, "traced": tracemalloc.get_traced_memory()[0], "cert": tls.cert_pem.decode(),
                      "options": hex(ctx.options), "num_tickets": ctx.num_tickets}), flush=True)
    while line := (await reader.readline()).decode().strip():
        if line == "quit":
            break
        print(json.dumps(await server.command(line)), flush=True)
    srv.close()


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind, n = FRAME.unpack(await reader.readexactly(FRAME.size))
    return kind, await reader.readexactly(n) if n else b""


async def clients(port: int, cert: str, agents: list[tuple[int, str]], ready: Path) -> None:
    import asyncio.sslproto

    asyncio.sslproto.SSLProtocol.max_size = 16640  # type: ignore[misc]  # the clients' memory is not measured
    ctx = ssl.create_default_context(cadata=cert)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sem, parked = asyncio.Semaphore(100), asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def park(idx: int, agent_id: str) -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                           server_hostname=PINNED_TARGET_NAME)
            kind, nonce = await _read_frame(reader)
            assert kind == NONCE, kind
            writer.write(_frame(AUTH, _key(idx).sign(_signed(nonce, agent_id)) + agent_id.encode()))
            kind, _ = await _read_frame(reader)
            if kind != OK:
                raise SystemExit(f"agent {agent_id} not accepted")
            held.append(writer)
            if len(held) == len(agents):
                parked.set()
        while True:  # parked: answer each ring (a real agent would open its gRPC Channel here)
            kind, _ = await _read_frame(reader)
            if kind == RING:
                writer.write(_frame(ANSWER))

    tasks = [asyncio.create_task(park(i, a)) for i, a in agents]
    done = asyncio.create_task(parked.wait())
    await asyncio.wait([done, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        if t.done() and t.exception():
            raise SystemExit(f"a client failed: {t.exception()!r}")
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(str(len(held)))
    tmp.replace(ready)
    await asyncio.gather(*tasks)


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=2000, help="parked agents (one TLS connection each)")
    ap.add_argument("--client-processes", type=int, default=1)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--ring-sample", type=int, default=100)
    ap.add_argument("--no-release-buffers", action="store_true", help="clear SSL_MODE_RELEASE_BUFFERS")
    ap.add_argument("--compression", action="store_true", help="clear OP_NO_COMPRESSION")
    ap.add_argument("--num-tickets", type=int, default=-1, help="TLS 1.3 tickets per handshake (-1: default)")
    ap.add_argument("--gc-freeze", action="store_true", help="gc.freeze() in the server before the baseline")
    ap.add_argument("--tracemalloc", action="store_true", help="also the Python allocations per agent (slower)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--client", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args))
        return
    if args.client:
        _raise_nofile()
        job = json.loads(Path(args.client).read_text())
        asyncio.run(clients(job["port"], job["cert"], [tuple(a) for a in job["agents"]], Path(args.client + ".ready")))
        return
    _raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="proto-doorbell-"))
    flags = [f"--{f}" for f in ("no_release_buffers", "compression", "gc_freeze", "tracemalloc") if getattr(args, f)]
    flags = [f.replace("_", "-") for f in flags] + ["--num-tickets", str(args.num_tickets)]
    srv = subprocess.Popen([sys.executable, __file__, "--serve", "--data-dir", str(tmp / "data"), *flags],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert srv.stdin is not None and srv.stdout is not None
    workers: list[subprocess.Popen[bytes]] = []

    def ask(line: str) -> dict[str, Any]:
        assert srv.stdin is not None and srv.stdout is not None
        srv.stdin.write(line + "\n")
        srv.stdin.flush()
        return dict(json.loads(srv.stdout.readline()))

    try:
        hello = json.loads(srv.stdout.readline())
        proc = psutil.Process(srv.pid)
        time.sleep(1.0)
        rss0 = proc.memory_info().rss
        store = Store.open(f"sqlite:///{tmp / 'data' / 'casefile.db'}")
        agents = enroll(store, args.clients, KEY_LABEL, "bell")
        store.close()
        t0 = time.perf_counter()
        for k in range(args.client_processes):
            f = tmp / f"client-{k}.json"
            f.write_text(json.dumps({"port": hello["port"], "cert": hello["cert"],
                                     "agents": agents[k :: args.client_processes]}))
            workers.append(subprocess.Popen([sys.executable, __file__, "--client", str(f)]))
        done = [tmp / f"client-{k}.json.ready" for k in range(args.client_processes)]
        while not all(p.exists() for p in done):
            if any(w.poll() is not None for w in workers) or srv.poll() is not None:
                raise SystemExit("a client or the server died; see its output above")
            time.sleep(0.2)
        connect_s = time.perf_counter() - t0
        time.sleep(2.0)
        c0, w0 = proc.cpu_times(), time.monotonic()
        time.sleep(args.idle_seconds)
        c1, w1 = proc.cpu_times(), time.monotonic()
        rss1 = proc.memory_info().rss
        cpu = (c1.user + c1.system - c0.user - c0.system) / (w1 - w0) * 100
        stats = ask("stats")
        n = stats["parked"]
        seq, burst = ask(f"ring {args.ring_sample}")["ms"], ask(f"burst {args.ring_sample}")["ms"]
        ask("trim")
        time.sleep(0.5)
        rss2 = proc.memory_info().rss
        print(f"doorbell server: TLS 1.3 over MemoryBIOs, options {hello['options']}, num_tickets "
              f"{hello['num_tickets']}, flags {flags}; {ssl.OPENSSL_VERSION}; load average {psutil.getloadavg()}")
        print(f"{n} agents parked ({args.client_processes} client process(es)), connected in {connect_s:.1f} s")
        print("| figure | value |")
        print("|---|---|")
        print(f"| parked agents / TLS sessions in the server's cache | {n:,} / {stats['tls_sessions_cached']:,} |")
        print(f"| server RSS before / with agents parked | {rss0 / 2**20:.1f} / {rss1 / 2**20:.1f} MiB |")
        print(f"| memory per parked agent | {(rss1 - rss0) / max(n, 1) / 1024:.1f} KiB |")
        print(f"| same after the rings and malloc_trim(0) | {(rss2 - rss0) / max(n, 1) / 1024:.1f} KiB |")
        if args.tracemalloc:
            py = (stats["traced"] - hello["traced"]) / n / 1024
            print(f"| of which Python allocations (tracemalloc) | {py:.1f} KiB |")
        print(f"| server CPU at rest over {args.idle_seconds:g} s | {max(cpu, 0.0):.2f} % of a core |")
        print(f"| ring to answer, {len(seq)} one after another, p50 / p99 | "
              f"{_pct(seq, 50):.2f} / {_pct(seq, 99):.2f} ms |")
        print(f"| ring to answer, {len(burst)} at once, p50 / p99 | {_pct(burst, 50):.2f} / {_pct(burst, 99):.2f} ms |")
        print(f"| server open file descriptors | {proc.num_fds():,} |")
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(60)
        if srv.poll() is None:
            srv.stdin.close()
            srv.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
