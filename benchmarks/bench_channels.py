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

``--park``: the collector offers its doorbell after 1 s idle (``--park-after 1``), and each
agent, once accepted, parks as the daemon does (``simagent.park``: the product's
``Doorbell.park`` on the port ``ChannelAccepted`` advertised, then its stream half-closed and
read to its end; each worker closes a gRPC connection once all its streams parked). The
figures are then those of N parked agents, and the collector's log and audit are counted to
show they all parked (and left their Channel).

    .venv/bin/python benchmarks/bench_channels.py --agents 10000
    .venv/bin/python benchmarks/bench_channels.py --agents 2000 --idle-seconds 10 --park
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
from simagent import enroll, handshake, park, sim_key

from agent.daemon.pinned_tls import tls_context
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


async def _hold(addr: str, agents: list[tuple[int, str]], per_conn: int, ready: Path, insecure: bool,
                pin: str | None, park_bound: int) -> None:
    """Hold the agents' streams; with ``pin`` (``--park``) park each on the doorbell instead."""
    address = parse_address(addr)
    creds = None if insecure else grpc.ssl_channel_credentials(root_certificates=fetch_certificate(address))
    opts = [("grpc.ssl_target_name_override", PINNED_TARGET_NAME), ("grpc.use_local_subchannel_pool", 1)]
    calls: list[Any] = []
    held = [0]
    bells: list[Any] = []
    park_s: list[float] = []
    refusals = [0]
    sem = asyncio.Semaphore(200)  # a bounded connect rate: this measures holding, not a storm
    # Under the doorbell's own bound on handshakes in flight (128) over all the workers.
    park_sem = asyncio.Semaphore(park_bound)
    if pin:
        await tls_context(address, pin)  # each real agent builds it once; here once per process

    async def one(stub: Any, idx: int, agent_id: str) -> None:
        async with sem:
            key = _key(idx)
            call, accepted = await handshake(stub, agent_id, key)
            if accepted is grpc.aio.EOF or accepted.WhichOneof("msg") != "accepted":
                raise SystemExit(f"agent {agent_id} not accepted: {accepted}")
            held[0] += 1
            if not pin:
                calls.append(call)
        if pin:  # the call is not kept: grpc-core closes a connection only once its calls are freed
            async with park_sem:
                t0 = time.perf_counter()
                bell, refused = await park(call, accepted, address, pin, key, agent_id)
                park_s.append(time.perf_counter() - t0)
                bells.append(bell)
                refusals[0] += refused

    async def connection(members: list[tuple[int, str]]) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(addr, options=opts) if creds is None else grpc.aio.secure_channel(
            addr, creds, options=opts
        )
        stub = collector_pb2_grpc.ChannelStub(ch)
        await asyncio.gather(*(one(stub, idx, aid) for idx, aid in members))
        if pin:  # every stream on it parked: the connection goes, as the daemon's does
            await ch.close()
        return ch

    channels = await asyncio.gather(*(connection(agents[i : i + per_conn]) for i in range(0, len(agents), per_conn)))
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps({"held": held[0], "parked": len(bells), "refusals": refusals[0], "park_s": park_s}))
    tmp.replace(ready)
    await asyncio.Event().wait()
    del channels


def worker(args: argparse.Namespace) -> None:
    _raise_nofile()
    agents = [tuple(x) for x in json.loads(Path(args.worker).read_text())]
    park_bound = max(1, 120 // args.clients)
    asyncio.run(_hold(args.addr, agents, args.per_connection, Path(args.worker + ".ready"), args.insecure,  # type: ignore[arg-type]
                      args.pin, park_bound))


def _park_report(args: argparse.Namespace, results: list[dict[str, Any]], tmp: Path, data: Path, addr: str,
                 pid: int, nofile: int, connect_s: float, rss: tuple[int, int], cpu: float, fds: int) -> None:
    """The figures of ``--park``, and the collector's own count of what parked (its log and
    audit), so that they are those of N parked agents, not of agents that failed to."""
    parked = sum(r["parked"] for r in results)
    park_s = sorted(x for r in results for x in r["park_s"])
    log_text = (tmp / "collector.log").read_text()
    counts = {what: log_text.count(what) for what in (") connected from ", " disconnected (", ") parked from ")}
    closed = log_text.count("doorbell from ")  # a bell closed before or after parking (refused, late, bad)
    from sqlalchemy import create_engine, text

    engine = create_engine(args.db_url or f"sqlite:///{data / 'casefile.db'}")
    try:
        with engine.connect() as conn:
            q = "SELECT count(*) FROM audit_log WHERE action = 'channel.park' AND outcome = 'ok'"
            audited = int(conn.execute(text(q)).scalar_one())
    finally:
        engine.dispose()
    p99 = statistics.quantiles(park_s, n=100, method="inclusive")[98] if len(park_s) >= 2 else park_s[0]
    rss0, rss1 = rss
    hwm = int(next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM")).split()[1])
    print(f"collector: {addr}, {'PostgreSQL' if args.db_url else 'SQLite'}, RLIMIT_NOFILE {nofile}, "
          f"--park-after 1; load average {psutil.getloadavg()}")
    print(f"{parked} agents parked on one collector's doorbell ({args.clients} client processes), "
          f"connected and parked in {connect_s:.1f} s")
    print("| figure | value |")
    print("|---|---|")
    print(f"| agents parked (the clients' count) | {parked:,} |")
    print(f"| collector's log: connected / disconnected / parked | {counts[') connected from ']:,} / "
          f"{counts[' disconnected (']:,} / {counts[') parked from ']:,} ({closed} doorbell closings) |")
    print(f"| collector's audit: channel.park ok | {audited:,} |")
    print(f"| collector RSS before / with parked agents | {rss0 / 2**20:.0f} / {rss1 / 2**20:.0f} MiB |")
    print(f"| collector peak RSS (VmHWM: the Channels before they parked) | {hwm / 2**10:.0f} MiB |")
    print(f"| memory per parked agent | {(rss1 - rss0) / max(parked, 1) / 1024:.1f} KiB |")
    print(f"| collector CPU at rest over {args.idle_seconds:g} s | {cpu:.2f} % of a core |")
    print(f"| collector open file descriptors | {fds:,} |")
    print(f"| parking, accepted → stream ended, p50 / p99 / max | {statistics.median(park_s) * 1000:.0f} / "
          f"{p99 * 1000:.0f} / {park_s[-1] * 1000:.0f} ms |")
    print(f"| doorbell refusals retried | {sum(r['refusals'] for r in results):,} |")
    if parked != args.agents or counts[") parked from "] != args.agents or counts[" disconnected ("] != args.agents:
        raise SystemExit(f"not all {args.agents} parked: see {tmp / 'collector.log'}")


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
    ap.add_argument("--park", action="store_true", help="the agents park on the collector's doorbell once accepted")
    ap.add_argument("--pin", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--addr", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.park and (args.insecure or args.server != "collector"):
        raise SystemExit("--park needs the collector with TLS (the doorbell is TLS only)")
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
    if args.park:
        cmd += ["--park-after", "1"]  # offered at once; the simulated agents park once accepted
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
        pin = json.loads(ready.read_text())["fingerprint"] if args.park else None
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
                                            + (["--insecure"] if args.insecure else [])
                                            + (["--pin", pin, "--clients", str(args.clients)] if pin else [])))
        done = [tmp / f"worker-{k}.json.ready" for k in range(args.clients)]
        while not all(p.exists() for p in done):
            if any(w.poll() is not None for w in workers):
                raise SystemExit("a worker died; see its output above")
            time.sleep(0.2)
        connect_s = time.perf_counter() - t0
        results = [json.loads(p.read_text()) for p in done]
        held = sum(r["held"] for r in results)
        time.sleep(2.0)
        r0 = _pg_rows_written(args.db_url)
        c0, w0 = proc.cpu_times(), time.monotonic()
        time.sleep(args.idle_seconds)
        c1, w1 = proc.cpu_times(), time.monotonic()
        r1 = _pg_rows_written(args.db_url)
        rss1 = proc.memory_info().rss
        cpu = (c1.user + c1.system - c0.user - c0.system) / (w1 - w0) * 100
        fds = proc.num_fds()
        if args.park:
            _park_report(args, results, tmp, data, addr, coll.pid, nofile, connect_s, (rss0, rss1), cpu, fds)
            return
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
