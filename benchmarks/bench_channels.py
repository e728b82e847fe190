"""Idle agent channels held by one collector process: how many, memory per channel, idle CPU.

A real collector process (TLS; SQLite, or ``--db-url`` PostgreSQL) on loopback. ``--agents``
N agents are enrolled in its store, then ``--clients`` worker processes (this script with
``--worker``) open their Channel streams and do the real handshake (hello, Ed25519
signature over the collector's fresh nonce, accepted) and then hold them idle.
``--per-connection`` streams share one HTTP/2 connection (1 = one TCP connection per
agent, like real agents). Reported: the collector's RSS before and with N channels (the
difference / N is the memory per channel) and its CPU over ``--idle-seconds`` at rest; with
PostgreSQL also the rows the replica wrote a second at rest (inserted + updated + deleted,
from ``pg_stat_user_tables``), which is what N idle agents cost the database.

    .venv/bin/python benchmarks/bench_channels.py --agents 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
from simagent import enroll, handshake, sim_key

from agent.keys import SigningKey
from agent.transport.connect import PINNED_TARGET_NAME, fetch_certificate, parse_address
from collector.storage import Store
from protos import collector_pb2_grpc

BIN = Path(sys.executable).parent


KEY_LABEL = b"bench-channels"  # the simulated agents' keys: sim_key(KEY_LABEL, i)


def _key(i: int) -> SigningKey:
    return sim_key(KEY_LABEL, i)


def _raise_nofile() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1_048_576
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def _pg_rows_written(db_url: str | None) -> int:
    """Rows inserted, updated and deleted so far in the database (PostgreSQL's statistics)."""
    if not db_url:
        return 0
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            q = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"
            return int(conn.execute(text(q)).scalar_one())
    finally:
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _hold(addr: str, agents: list[tuple[int, str]], per_conn: int, ready: Path, insecure: bool) -> None:
    creds = None if insecure else grpc.ssl_channel_credentials(root_certificates=fetch_certificate(parse_address(addr)))
    opts = [("grpc.ssl_target_name_override", PINNED_TARGET_NAME), ("grpc.use_local_subchannel_pool", 1)]
    channels: list[grpc.aio.Channel] = []
    calls: list[Any] = []
    sem = asyncio.Semaphore(200)  # a bounded connect rate: this measures holding, not a storm

    async def one(stub: Any, idx: int, agent_id: str) -> None:
        async with sem:
            key = _key(idx)
            call, accepted = await handshake(stub, agent_id, key)
            if accepted is grpc.aio.EOF or accepted.WhichOneof("msg") != "accepted":
                raise SystemExit(f"agent {agent_id} not accepted: {accepted}")
            calls.append(call)

    jobs = []
    for i in range(0, len(agents), per_conn):
        ch = grpc.aio.insecure_channel(addr, options=opts) if creds is None else grpc.aio.secure_channel(
            addr, creds, options=opts
        )
        channels.append(ch)
        stub = collector_pb2_grpc.ChannelStub(ch)
        jobs += [one(stub, idx, aid) for idx, aid in agents[i : i + per_conn]]
    await asyncio.gather(*jobs)
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(str(len(calls)))
    tmp.replace(ready)
    await asyncio.Event().wait()


def worker(args: argparse.Namespace) -> None:
    _raise_nofile()
    agents = [tuple(x) for x in json.loads(Path(args.worker).read_text())]
    asyncio.run(_hold(args.addr, agents, args.per_connection, Path(args.worker + ".ready"), args.insecure))  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=2, help="worker processes holding the streams")
    ap.add_argument("--per-connection", type=int, default=1, help="streams per HTTP/2 connection")
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--db-url", default=None)
    ap.add_argument("--insecure", action="store_true", help="plaintext on loopback: what TLS costs per channel")
    ap.add_argument("--server", choices=("collector", "grpclib"), default="collector",
                    help="grpclib: the prototype benchmarks/proto_channel_grpclib.py instead of the collector")
    ap.add_argument("--ssl-read-buffer", type=int, default=0, help="--server grpclib: asyncio's TLS read buffer")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE in the server's environment")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--addr", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    nofile = _raise_nofile()  # inherited by the collector and the workers
    tmp = Path(tempfile.mkdtemp(prefix="bench-channels-"))
    data, addr = tmp / "data", f"127.0.0.1:{_free_port()}"
    ready = tmp / "ready.json"
    cmd = [str(BIN / "casefile-collector"), "serve", "--address", addr, "--data-dir", str(data),
           "--ready-file", str(ready)]
    if args.db_url:
        cmd += ["--db-url", args.db_url]
    if args.insecure:
        cmd += ["--insecure"]
    if args.server == "grpclib":
        cmd = [sys.executable, str(Path(__file__).with_name("proto_channel_grpclib.py")), *cmd[2:],
               "--ssl-read-buffer", str(args.ssl_read_buffer)]
    env = dict(os.environ, **dict(e.split("=", 1) for e in args.env))
    coll = subprocess.Popen(cmd, stdout=(tmp / "collector.log").open("w"), stderr=subprocess.STDOUT, env=env)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        while not ready.exists():
            if coll.poll() is not None:
                raise SystemExit((tmp / "collector.log").read_text())
            time.sleep(0.05)
        proc = psutil.Process(coll.pid)
        time.sleep(1.0)
        rss0 = proc.memory_info().rss
        store = Store.open(args.db_url or f"sqlite:///{data / 'casefile.db'}")
        agents = enroll(store, args.agents, KEY_LABEL, "sim")
        store.close()
        t0 = time.perf_counter()
        parts = [agents[k :: args.clients] for k in range(args.clients)]
        for k, part in enumerate(parts):
            f = tmp / f"worker-{k}.json"
            f.write_text(json.dumps(part))
            workers.append(subprocess.Popen([sys.executable, __file__, "--worker", str(f), "--addr", addr,
                                             "--per-connection", str(args.per_connection)]
                                            + (["--insecure"] if args.insecure else [])))
        done = [tmp / f"worker-{k}.json.ready" for k in range(args.clients)]
        while not all(p.exists() for p in done):
            if any(w.poll() is not None for w in workers):
                raise SystemExit("a worker died; see its output above")
            time.sleep(0.2)
        connect_s = time.perf_counter() - t0
        held = sum(int(p.read_text()) for p in done)
        time.sleep(2.0)
        r0 = _pg_rows_written(args.db_url)
        c0, w0 = proc.cpu_times(), time.monotonic()
        time.sleep(args.idle_seconds)
        c1, w1 = proc.cpu_times(), time.monotonic()
        r1 = _pg_rows_written(args.db_url)
        rss1 = proc.memory_info().rss
        cpu = (c1.user + c1.system - c0.user - c0.system) / (w1 - w0) * 100
        fds = proc.num_fds()
        print(f"collector: {addr}, {'PostgreSQL' if args.db_url else 'SQLite'}, RLIMIT_NOFILE {nofile}, "
              f"server {args.server} {args.env or ''}; load average {psutil.getloadavg()}")
        print(f"{held} channels held by one collector process ({args.clients} client processes, "
              f"{args.per_connection} stream(s) per connection), connected in {connect_s:.1f} s")
        print("| figure | value |")
        print("|---|---|")
        print(f"| idle channels held | {held:,} |")
        print(f"| collector RSS before / with channels | {rss0 / 2**20:.0f} / {rss1 / 2**20:.0f} MiB |")
        print(f"| memory per channel | {(rss1 - rss0) / max(held, 1) / 1024:.1f} KiB |")
        print(f"| collector CPU at rest over {args.idle_seconds:g} s | {cpu:.2f} % of a core |")
        print(f"| collector open file descriptors | {fds:,} |")
        if args.db_url:
            print(f"| PostgreSQL rows written at rest, all tables | {(r1 - r0) / (w1 - w0):.2f} a second |")
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(60)
        coll.send_signal(signal.SIGTERM)
        coll.wait(120)


if __name__ == "__main__":
    main()
