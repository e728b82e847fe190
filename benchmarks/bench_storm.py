"""A reconnect storm: N agents reconnecting at once to one collector, with the agent's backoff.

A real collector process (TLS; SQLite, or ``--db-url`` PostgreSQL) on loopback. ``--agents``
N agents are enrolled; ``--clients`` worker processes (this script with ``--worker``) each run
their share as simulated agents: each opens its stream with the daemon's own transport
(``agent.daemon.h2stream.BidiStream``: pinned TLS, HTTP/2, keepalive pings every 30 s), one
TCP connection each, does the real Channel handshake (hello, Ed25519 signature over the
collector's nonce, accepted), then idles. Each simulated agent
reconnects exactly as ``agent.daemon.service.AgentService._serve`` does: after an accepted
stream ends it waits ``uniform(0, base)``; after each failed attempt ``uniform(0, min(cap,
base * 2**failures))`` (full jitter; the daemon's defaults base 1 s, cap 60 s), and gives a
connection attempt or handshake ``HANDSHAKE_TIMEOUT_S`` (20 s).

Once all N are connected (at most ``--ramp`` first handshakes in flight per worker: a ramp,
not a storm), an
engineer's ``ListBundles`` loop (≤ ``--qps`` calls a second) runs for ``--baseline-seconds``:
the baseline. Then the collector is killed (SIGKILL: a crash, nothing said to the agents)
and started again on the same address and data; every agent's stream breaks at once and
all N reconnect. Reported: time from the kill to all N back, the attempts refused on the
way (by status), the collector's CPU and RSS, and the engineer's ListBundles latency from
the restart until all are back, against the baseline.

    .venv/bin/python benchmarks/bench_storm.py --agents 10000 --clients 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import psutil
from simagent import enroll, sim_key

from agent.daemon import channel_message
from agent.daemon.h2stream import BidiStream, RpcError
from agent.daemon.service import HANDSHAKE_TIMEOUT_S, DaemonOptions
from agent.errors import TransportError
from agent.keys import SigningKey
from agent.transport import open_channel, parse_address
from agent.transport.connect import CollectorAddress
from collector.storage import Store
from protos import collector_pb2, collector_pb2_grpc

BIN = Path(sys.executable).parent
_OPTS = DaemonOptions()  # the daemon's defaults: backoff base 1 s, cap 60 s


KEY_LABEL = b"bench-storm"  # the simulated agents' keys: sim_key(KEY_LABEL, i)


def _key(i: int) -> SigningKey:
    return sim_key(KEY_LABEL, i)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _State:
    def __init__(self) -> None:
        self.connected = 0
        self.accepted = 0
        self.refused: Counter[str] = Counter()


def _message(raw: bytes | None) -> collector_pb2.CollectorMessage:
    if raw is None:
        raise ConnectionError("stream ended during the handshake")
    return collector_pb2.CollectorMessage.FromString(raw)


async def _handshake(call: BidiStream, idx: int, agent_id: str) -> None:
    hello = collector_pb2.ChannelHello(agent_id=agent_id, agent_version="bench")
    await call.write(collector_pb2.AgentMessage(hello=hello).SerializeToString())
    challenge = _message(await call.read())
    sig = _key(idx).sign(channel_message(bytes(challenge.challenge.nonce), agent_id))
    answer = collector_pb2.AgentMessage(challenge_response=collector_pb2.ChallengeResponse(signature=sig))
    await call.write(answer.SerializeToString())
    if _message(await call.read()).WhichOneof("msg") != "accepted":
        raise ConnectionError("not accepted")


async def _agent(
    address: CollectorAddress, pin: str, idx: int, agent_id: str, first: asyncio.Semaphore, st: _State
) -> None:
    failures = 0
    ramp: asyncio.Semaphore | None = first  # the first connection only: a ramp, not a storm
    while True:
        accepted = False
        call: BidiStream | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                if ramp is not None:
                    await stack.enter_async_context(ramp)
                # As AgentService._session: the connection, then the handshake, 20 s each.
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    call = await BidiStream.open(
                        address,
                        "/casefile.v1.Channel/Connect",
                        pin=pin,
                        user_agent="casefile-agent/bench",
                        keepalive_s=_OPTS.keepalive_s,
                        keepalive_timeout_s=_OPTS.keepalive_timeout_s,
                    )
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    await _handshake(call, idx, agent_id)
            ramp = None
            accepted = True
            st.connected += 1
            st.accepted += 1
            with contextlib.suppress(RpcError):
                while await call.read() is not None:  # probes are not sent to idle streams
                    pass
        except RpcError as exc:
            st.refused[exc.code] += 1
        except (TimeoutError, ConnectionError, OSError, TransportError) as exc:
            st.refused[type(exc).__name__] += 1
        finally:
            if accepted:
                st.connected -= 1
            if call is not None:
                await call.close()
        failures = 0 if accepted else failures + 1  # as AgentService._serve
        ceiling = min(_OPTS.backoff_cap_s, _OPTS.backoff_base_s * 2 ** min(failures, 16))
        await asyncio.sleep(random.uniform(0, ceiling))


async def _worker(args: argparse.Namespace) -> None:
    agents = [tuple(x) for x in json.loads(Path(args.worker).read_text())]
    address = parse_address(args.addr)
    st = _State()
    first = asyncio.Semaphore(args.ramp)
    tasks = [asyncio.create_task(_agent(address, args.pin, idx, aid, first, st)) for idx, aid in agents]
    status = Path(args.worker + ".status")
    while True:
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps({"connected": st.connected, "accepted": st.accepted, "refused": st.refused}))
        tmp.replace(status)
        await asyncio.sleep(0.25)
    del tasks


def _status(files: list[Path]) -> tuple[int, int, Counter[str]]:
    connected = accepted = 0
    refused: Counter[str] = Counter()
    for f in files:
        with contextlib.suppress(FileNotFoundError, ValueError):
            d = json.loads(f.read_text())
            connected += d["connected"]
            accepted += d["accepted"]
            refused.update(d["refused"])
    return connected, accepted, refused


class _Queries(threading.Thread):
    """An engineer's ListBundles loop, at most ``qps`` calls a second, until stopped."""

    def __init__(self, addr: str, fingerprint: str, token: str, qps: float) -> None:
        super().__init__(daemon=True)
        self.addr, self.fingerprint, self.token, self.qps = addr, fingerprint, token, qps
        self.lat: list[float] = []
        self.failed: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        md = (("authorization", f"Bearer {self.token}"),)
        with open_channel(parse_address(self.addr), ca_fingerprint=self.fingerprint) as ch:
            stub = collector_pb2_grpc.QueryStub(ch)
            while not self.halt.is_set():
                t = time.perf_counter()
                try:
                    stub.ListBundles(collector_pb2.ListBundlesRequest(page_size=50), metadata=md, timeout=30)
                    self.lat.append(time.perf_counter() - t)
                except grpc.RpcError as exc:
                    self.failed[exc.code().name] += 1
                self.halt.wait(max(0.0, 1 / self.qps - (time.perf_counter() - t)))


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] * 1000 if s else float("nan")


def _pg_counters(db_url: str | None) -> dict[str, int]:
    """PostgreSQL's counters of the benchmark's database so far: transactions committed, rows
    inserted + updated + deleted in all, and per table of the Channel's writes (``{}`` on SQLite)."""
    if not db_url:
        return {}
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            db = conn.execute(text(
                "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
                "WHERE datname = current_database()")).one()
            out = {"xact_commit": int(db[0]), "rows": int(db[1])}
            q = "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables"
            for name, n in conn.execute(text(q)):
                if name in ("agent_channels", "collector_replicas", "agents", "audit_log"):
                    out[name] = int(n)
            return out
    finally:
        engine.dispose()


def _start(cmd: list[str], ready: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT)
    while not ready.exists():
        if proc.poll() is not None:
            raise SystemExit(log.read_text()[-3000:])
        time.sleep(0.05)
    return proc, str(json.loads(ready.read_text())["fingerprint"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=4, help="worker processes running the simulated agents")
    ap.add_argument("--ramp", type=int, default=50, help="first connections in flight at once, per worker")
    ap.add_argument("--baseline-seconds", type=float, default=20.0)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="give up on the storm after this")
    ap.add_argument("--qps", type=float, default=20.0)
    ap.add_argument("--db-url", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--addr", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pin", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(_worker(args))
        return
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="bench-storm-"))
    data, addr, ready, log = tmp / "data", f"127.0.0.1:{_free_port()}", tmp / "ready.json", tmp / "collector.log"
    cmd = [str(BIN / "casefile-collector"), "serve", "--address", addr, "--data-dir", str(data),
           "--ready-file", str(ready)]
    if args.db_url:
        cmd += ["--db-url", args.db_url]
    coll, fingerprint = _start(cmd, ready, log)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        store = Store.open(args.db_url or f"sqlite:///{data / 'casefile.db'}")
        token, _ = store.create_token("engineer", role="engineer", label="storm", ttl=dt.timedelta(hours=2))
        agents = enroll(store, args.agents, KEY_LABEL, "storm")
        store.close()
        status = []
        for k in range(args.clients):
            f = tmp / f"worker-{k}.json"
            f.write_text(json.dumps(agents[k :: args.clients]))
            status.append(Path(str(f) + ".status"))
            workers.append(subprocess.Popen([sys.executable, __file__, "--worker", str(f), "--addr", addr,
                                             "--ramp", str(args.ramp), "--pin", fingerprint]))
        t0 = time.monotonic()
        while _status(status)[0] < args.agents:
            if any(w.poll() is not None for w in workers) or time.monotonic() - t0 > 20 * 60:
                raise SystemExit(f"initial connect did not finish: {_status(status)}")
            time.sleep(0.5)
        ramp_s = time.monotonic() - t0
        time.sleep(2.0)
        base = _Queries(addr, fingerprint, token, args.qps)
        base.start()
        time.sleep(args.baseline_seconds)
        base.halt.set()
        base.join()
        _c, accepted0, refused0 = _status(status)

        pg0 = _pg_counters(args.db_url)
        coll.send_signal(signal.SIGKILL)
        coll.wait()
        killed = time.monotonic()
        coll, _fp = _start(cmd, ready, log)
        restarted = time.monotonic() - killed
        proc = psutil.Process(coll.pid)
        sims = [psutil.Process(w.pid) for w in workers]
        sim0 = sum(c.user + c.system for c in (p.cpu_times() for p in sims))
        load0 = psutil.getloadavg()
        storm = _Queries(addr, fingerprint, token, args.qps)
        storm.start()
        curve: list[tuple[float, int]] = []
        back_s = float("nan")
        peak_rss = peak_fds = 0
        while time.monotonic() - killed < args.max_seconds:
            connected, _a, _r = _status(status)
            curve.append((time.monotonic() - killed, connected))
            peak_rss = max(peak_rss, proc.memory_info().rss)
            peak_fds = max(peak_fds, proc.num_fds())
            if connected >= args.agents:
                back_s = time.monotonic() - killed
                break
            time.sleep(0.25)
        cpu = proc.cpu_times()
        sim_cpu = sum(c.user + c.system for c in (p.cpu_times() for p in sims)) - sim0
        storm_s = time.monotonic() - killed
        storm.halt.set()
        storm.join()
        time.sleep(1.5)  # a backend reports its counters at most once a second
        pg1 = _pg_counters(args.db_url)
        _c, accepted1, refused1 = _status(status)
        refused = refused1 - refused0
        print(f"collector {addr}, {'PostgreSQL' if args.db_url else 'SQLite'}; {args.agents} agents over "
              f"{args.clients} processes, initial ramp {ramp_s:.0f} s; load average at the kill {load0}, "
              f"at the end {psutil.getloadavg()}")
        marks = {}
        for frac in (0.5, 0.9, 0.99):
            marks[frac] = next((t for t, c in curve if c >= frac * args.agents), float("nan"))
        print("| figure | value |")
        print("|---|---|")
        print(f"| kill → collector ready again | {restarted:.1f} s |")
        print(f"| kill → 50 % / 90 % / 99 % / all back | {marks[0.5]:.1f} / {marks[0.9]:.1f} / {marks[0.99]:.1f} / "
              f"**{back_s:.1f} s** |")
        print(f"| streams accepted in the storm / attempts refused or failed | {accepted1 - accepted0:,} / "
              f"{sum(refused.values()):,} {dict(refused)} |")
        print(f"| collector CPU during the storm (user + system) / peak RSS / peak open fds | "
              f"{cpu.user + cpu.system:.1f} s / {peak_rss / 2**20:.0f} MiB / {peak_fds:,} |")
        print(f"| simulated agents' CPU during the storm (all {args.clients} processes) | {sim_cpu:.1f} s in "
              f"{storm_s:.0f} s |")
        print(f"| ListBundles during the storm: p50 / p99 / max (n, failed) | {_pct(storm.lat, 50):.1f} / "
              f"**{_pct(storm.lat, 99):.1f}** / {_pct(storm.lat, 100):.1f} ms (n {len(storm.lat)}, "
              f"{dict(storm.failed)}) |")
        print(f"| ListBundles baseline, all connected and idle: p50 / p99 (n) | {_pct(base.lat, 50):.1f} / "
              f"{_pct(base.lat, 99):.1f} ms (n {len(base.lat)}) |")
        if base.lat and storm.lat:
            print(f"| p99 storm / baseline | {_pct(storm.lat, 99) / _pct(base.lat, 99):.1f}x |")
        if pg0 and pg1:
            per_s = {k: (pg1.get(k, 0) - pg0.get(k, 0)) / storm_s for k in pg1}
            tables = ", ".join(f"{k} {v:.1f}" for k, v in per_s.items() if k not in ("xact_commit", "rows"))
            print(f"| PostgreSQL during the storm ({storm_s:.0f} s; the engineer's calls included): transactions "
                  f"committed / rows written a second | {per_s['xact_commit']:.1f} / {per_s['rows']:.1f} "
                  f"({tables}) |")
        print(f"median ListBundles during the storm {statistics.median(storm.lat) * 1000 if storm.lat else 0:.1f} ms")
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.wait(60)
        coll.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            coll.wait(120)


if __name__ == "__main__":
    main()
