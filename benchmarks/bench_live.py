"""Live snapshot latency, request → bundle stored, with N agents holding channels.

A real collector process (TLS, SQLite) on loopback — or, with ``--db postgres``,
``--replicas`` collector processes sharing a fresh PostgreSQL database and one blob
folder; ``--agents`` N-1 simulated agents in this process, sharing one event loop and
speaking the real Channel protocol (hello, signed challenge) and then idling, spread
over the replicas; one real ``casefile agent run`` process, which is the one asked for
``--snapshots`` facts-scope snapshots, one after another. With replicas the real agent
holds its channel on the last replica and the engineer asks the first, so every request
crosses replicas (row + NOTIFY, claim, result NOTIFY). Latency is from the engineer's
RequestSnapshot call to the ``done`` event, which the collector emits after Ingest
stored the bundle. The ``collect`` column is the agent's collection time (the
``collecting`` → ``uploading`` events), to separate protocol from collection.

``--park``: the collectors offer their doorbell after 1 s idle (``--park-after 1``); the
simulated agents park once accepted (``simagent.park``, the product's client) and the real
agent parks by itself once idle 1 s. Before each snapshot the bench waits for the real
agent's next ``channel.park`` audit row, so every request finds it parked: the latency then
includes the ring, the agent's new Channel connection and handshake.

    .venv/bin/python benchmarks/bench_live.py --agents 1000 --snapshots 30
    .venv/bin/python benchmarks/bench_live.py --agents 10000 --snapshots 30
    .venv/bin/python benchmarks/bench_live.py --agents 1000 --snapshots 30 --park
    .venv/bin/python benchmarks/bench_live.py --agents 1000 --snapshots 30 --db postgres --replicas 2 \\
        --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from simagent import handshake, park
from sqlalchemy import create_engine, make_url, text

from agent.keys import SigningKey, fingerprint_of
from agent.state import AgentHome, Enrollment
from agent.transport import enroll, open_channel, parse_address
from agent.transport.connect import PINNED_TARGET_NAME, fetch_certificate
from agent.transport.live_states import state_of
from collector.storage import Store
from protos import collector_pb2, collector_pb2_grpc

BIN = Path(sys.executable).parent
AGENTS_PER_CONNECTION = 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out: {what}")


async def _simulated(
    addrs: list[str], pem: bytes, agents: list[tuple[str, SigningKey]], ready: list[int], pin: str | None
) -> None:
    """Hold the agents' streams; with ``pin`` (``--park``) park them on the doorbell instead
    and close each connection once its streams parked (a parked agent's call is not kept)."""
    creds = grpc.ssl_channel_credentials(root_certificates=pem)
    channels = []
    calls = []
    bells = []
    for n, i in enumerate(range(0, len(agents), AGENTS_PER_CONNECTION)):
        addr = addrs[n % len(addrs)]
        ch = grpc.aio.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", PINNED_TARGET_NAME)])
        channels.append(ch)
        stub = collector_pb2_grpc.ChannelStub(ch)

        async def one(agent_id: str, key: SigningKey, stub: Any = stub, addr: str = addr) -> None:
            call, accepted = await handshake(stub, agent_id, key)
            assert accepted.WhichOneof("msg") == "accepted"
            if pin:
                bells.append((await park(call, accepted, parse_address(addr), pin, key, agent_id))[0])
            else:
                calls.append(call)
            ready[0] += 1

        await asyncio.gather(*(one(a, k) for a, k in agents[i : i + AGENTS_PER_CONNECTION]))
        if pin:
            await ch.close()
    try:
        await asyncio.Event().wait()  # hold the streams until cancelled
    finally:
        for call in calls:
            call.cancel()
        for ch in channels:
            await ch.close()
        for bell in bells:
            await bell.close()


def _wait_parked(store: Store, agent_id: str, seen: int) -> int:
    """Until the agent parks again (more than ``seen`` ``channel.park`` audit rows), and a
    moment for its stream to end, so that the request rings it; the rows now."""

    def parks() -> int:
        return len(store.list_audit(100, actor=agent_id, action="channel.park", outcome="ok"))

    _wait(lambda: parks() > seen, 60, "the real agent parked")
    time.sleep(0.3)
    return parks()


def _fresh_pg_database(admin_url: str) -> tuple[str, Any]:
    admin = create_engine(make_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"casefile_bench_live_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), admin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000, help="connected agents in total (incl. the real one)")
    ap.add_argument("--snapshots", type=int, default=30)
    ap.add_argument("--marks", type=Path, help="write each snapshot's state times (ms from the request) here, JSON")
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument(
        "--pg-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server to create a scratch database on (--db postgres)",
    )
    ap.add_argument(
        "--replicas", type=int, default=None, help="collector processes (default 1 on sqlite, 2 on postgres)"
    )
    ap.add_argument("--park", action="store_true", help="agents park on the doorbell: each request rings")
    args = ap.parse_args()
    # This process holds one connection per AGENTS_PER_CONNECTION agents, the collector one
    # descriptor per connection (it raises its own limit); 10,000 agents fit either way.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    replicas = args.replicas or (2 if args.db == "postgres" else 1)
    if args.db == "sqlite" and replicas != 1:
        raise SystemExit("replicas share PostgreSQL: use --db postgres")
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-"))
    data = tmp / "data"
    admin = None
    if args.db == "postgres":
        db_url, admin = _fresh_pg_database(args.pg_url)
    else:
        db_url = f"sqlite:///{data / 'casefile.db'}"
    addrs = [f"127.0.0.1:{_free_port()}" for _ in range(replicas)]
    colls: list[subprocess.Popen[bytes]] = []
    agent_proc: subprocess.Popen[bytes] | None = None
    sim_loop = asyncio.new_event_loop()
    sim_task: asyncio.Future[None] | None = None
    try:
        for i, addr in enumerate(addrs):
            # The first replica makes the shared TLS certificate and migrates; then the rest.
            ready_file = tmp / f"ready-r{i + 1}.json"
            cmd = [
                str(BIN / "casefile-collector"),
                "serve",
                "--address",
                addr,
                "--data-dir",
                str(data),
                "--db-url",
                db_url,
                "--ready-file",
                str(ready_file),
                "--replica-id",
                f"r{i + 1}",
            ]
            if args.park:
                cmd += ["--park-after", "1"]
            colls.append(
                subprocess.Popen(cmd, stdout=(tmp / f"collector-r{i + 1}.log").open("w"), stderr=subprocess.STDOUT)
            )
            _wait(ready_file.exists, 60, f"collector r{i + 1} start")
        fp = json.loads((tmp / "ready-r1.json").read_text())["fingerprint"]
        engineer_addr, agent_addr = addrs[0], addrs[-1]
        store = Store.open(db_url)
        eng, _ = store.create_token("engineer", role="engineer", label="bench", ttl=dt.timedelta(hours=2))
        enroll_tok, _ = store.create_token("enroll", label="bench", ttl=dt.timedelta(hours=2), max_uses=1)
        sims = []
        for i in range(args.agents - 1):
            key = SigningKey.generate()
            rec = store.create_agent(key.public.raw, fingerprint_of(key.public.raw), f"sim-{i:05d}", None)
            sims.append((rec.id, key))
        home = AgentHome(tmp / "agent-home")
        key = home.key()
        with open_channel(parse_address(agent_addr), ca_fingerprint=fp) as ch:
            resp = enroll(ch, token=enroll_tok, key=key, hostname="bench-real", agent_version="bench")
        home.save_enrollment(Enrollment(resp.agent_id, agent_addr, fp, key.fingerprint))
        (home.root / "policy.json").write_text(json.dumps({"allowed_scopes": ["facts"], "rate_limit_per_hour": 0}))
        pem = fetch_certificate(parse_address(agent_addr))
        ready = [0]
        t0 = time.perf_counter()
        threading.Thread(target=sim_loop.run_forever, daemon=True).start()
        simulated = _simulated(addrs, pem, sims, ready, fp if args.park else None)
        sim_task = asyncio.run_coroutine_threadsafe(simulated, sim_loop)  # type: ignore[assignment]
        _wait(lambda: ready[0] >= len(sims), 600, f"{len(sims)} simulated agents connected")
        connect_s = time.perf_counter() - t0
        agent_proc = subprocess.Popen(
            [str(BIN / "casefile-agent"), "--home", str(home.root)],
            stdout=(tmp / "agent.log").open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "CASEFILE_LOG_LEVEL": "WARNING"},
        )
        _wait(
            lambda: store.list_audit(5, actor=resp.agent_id, action="channel.connect", outcome="ok"),
            60,
            "real agent connected",
        )
        md = (("authorization", f"Bearer {eng}"),)
        total, collect = [], []
        traces: list[dict[str, float]] = []
        parks = 0
        with open_channel(parse_address(engineer_addr), ca_fingerprint=fp) as ch:
            stub = collector_pb2_grpc.QueryStub(ch)
            for _ in range(args.snapshots):
                if args.park:
                    parks = _wait_parked(store, resp.agent_id, parks)
                start = time.perf_counter()
                marks: dict[str, float] = {}
                last = None
                for ev in stub.RequestSnapshot(collector_pb2.SnapshotRequestSpec(host=resp.agent_id), metadata=md):
                    marks[state_of(ev)] = time.perf_counter()
                    last = ev
                assert last is not None and state_of(last) == "done", last
                total.append((marks["done"] - start) * 1000)
                collect.append((marks["uploading"] - marks["collecting"]) * 1000)
                traces.append({state: round((t - start) * 1000, 1) for state, t in marks.items()})
        if args.marks:
            args.marks.write_text(json.dumps(traces, indent=1))
        q = statistics.quantiles
        where = (
            "SQLite, one collector"
            if replicas == 1
            else (f"PostgreSQL, {replicas} replicas: engineer on r1, real agent on r{replicas}")
        )
        print(f"{'parked (each request rings) ' if args.park else ''}"
              f"agents connected: {args.agents} ({len(sims)} simulated in {connect_s:.1f} s, 1 real process); {where}")
        if args.park:  # each request rang the parked agent, which came back on a new Channel
            connects = store.list_audit(100, actor=resp.agent_id, action="channel.connect", outcome="ok")
            print(f"real agent: parked {parks} times, connected {len(connects)} times (rung back)")
        print(f"bench process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        for i, coll in enumerate(colls):
            status = Path(f"/proc/{coll.pid}/status")
            if status.exists():  # Linux: what each collector holds with every agent connected
                rss = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmRSS"))
                fds = len(list(Path(f"/proc/{coll.pid}/fd").iterdir()))
                print(f"collector r{i + 1}: RSS {int(rss) / 1024:.0f} MiB, {fds} open descriptors")
        print("| figure | p50 ms | p99 ms | max ms | n |")
        print("|---|---|---|---|---|")
        rest = [a - b for a, b in zip(total, collect, strict=True)]
        rows = (
            ("request → bundle stored", total),
            ("of which agent collection", collect),
            ("protocol + upload + store (difference)", rest),
        )
        for name, xs in rows:
            p99 = q(xs, n=100, method="inclusive")[98] if len(xs) >= 2 else xs[0]
            print(f"| {name} | {statistics.median(xs):.0f} | {p99:.0f} | {max(xs):.0f} | {len(xs)} |")
    finally:
        if sim_task is not None:
            sim_task.cancel()
        if agent_proc is not None:
            agent_proc.send_signal(signal.SIGTERM)
            agent_proc.wait(30)
        for coll in colls:
            coll.send_signal(signal.SIGTERM)
        for coll in colls:
            coll.wait(60)
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(db_url).database}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
