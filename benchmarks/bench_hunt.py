"""A hunt over N connected agents: time until every bundle is stored, and Query meanwhile.

A real collector process (TLS, SQLite) on loopback; ``--agents`` N connected agents in
all, labelled ``role=web``: ``--real-agents`` R real ``casefile-agent`` processes, each
enrolled with ``--label role=web`` and its own home and policy (facts allowed), which
collect and upload as on a customer's machine, and N-R simulated agents in this process
speaking the real Channel protocol (hello, signed challenge). Each simulated one answers
the ``SnapshotRequest`` a hunt sends it the way a real agent's worker does after
collecting: it writes a real signed live bundle naming the request (facts with CPU,
memory, load, swap and one filesystem; one host in fifty busy, so the comparison has
something to find; written in /dev/shm where there is one, as a real agent writes on its
own disk, not the collector's) and uploads it through Ingest (``upload_bundle``, the agent's own
client) from a pool of ``--uploaders`` threads. There is no collection for those: their
part of the figure is the collector's side — fan-out, uploads verified and stored,
``done`` for each — not how long a machine takes to gather facts (bench_live's
``collect`` column); the real agents' part includes their collection.

Per run: one ``CreateHunt`` (a fresh token each run, so the hourly limit never bites);
the time from the call to the last request ``done`` (the ``updated_at`` the store wrote
for it, against the wall clock at the call), and the last real agent's ``done``; a Query
client calling ``ListHosts`` back to back the whole time, whose p99 is compared with
the same loop run for as long with the N agents connected and idle (the baseline, same
process, same run). Then ``GetHuntResults`` once, timed.

    .venv/bin/python benchmarks/bench_hunt.py --agents 200 --runs 3
    .venv/bin/python benchmarks/bench_hunt.py --agents 1000 --real-agents 4 --runs 3

Bounded: every wait has a timeout, and ``--max-seconds`` (default 540) ends the whole
run, stopping the collector and the agents, whatever state it is in.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psutil
from machine import machine_line
from simagent import handshake, open_doorbell

from agent.bundle import BundleMeta, BundleWriter, new_bundle_id
from agent.keys import SigningKey, fingerprint_of
from agent.state import AgentHome, Enrollment
from agent.transport import enroll, open_channel, parse_address
from agent.transport.client import UploadTarget, upload_bundle
from agent.transport.connect import PINNED_TARGET_NAME, fetch_certificate
from collector.storage import Store
from protos import collector_pb2, collector_pb2_grpc, facts_pb2

BIN = Path(sys.executable).parent
AGENTS_PER_CONNECTION = 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise SystemExit(f"timed out: {what}")


def _bundle(out: Path, key: SigningKey, agent_id: str, hostname: str, request_id: str, busy: bool) -> Any:
    """A real signed live bundle answering ``request_id``, as a worker would upload it."""
    now = dt.datetime.now(dt.UTC)
    snap = facts_pb2.Snapshot(agent_id=agent_id, kind="live", request_id=request_id, agent_version="bench")
    snap.collected_at.FromDatetime(now)
    snap.host.hostname = hostname
    snap.host.os = "Linux"
    snap.cpu.logical_count = 4
    snap.cpu.total_percent = 97.0 if busy else random.uniform(5, 25)
    snap.cpu.load1 = 7.5 if busy else random.uniform(0.2, 1.0)
    snap.memory.total = 8 << 30
    snap.memory.percent = random.uniform(40, 60)
    snap.memory.swap_total = 2 << 30
    snap.memory.swap_percent = random.uniform(0, 5)
    snap.disks.partitions.add(mountpoint="/", total=100 << 30, percent=random.uniform(30, 60))
    meta = BundleMeta(
        bundle_id=new_bundle_id(),
        hostname=hostname,
        created_at=now,
        kind="live",
        agent_id=agent_id,
        agent_version="bench",
        request_id=request_id,
    )
    snap.bundle_id = meta.bundle_id
    out.mkdir(parents=True, exist_ok=True)
    with BundleWriter(out, key=key, meta=meta) as w:
        w.add_bytes("facts.pb", snap.SerializeToString(deterministic=True))
        return w.finish(spec={"bench": True}, collectors=[], truncated=[], redaction=None)


class Fleet:
    """N simulated agents on one event loop; requests answered from a thread pool."""

    def __init__(
        self, addr: str, fp: str, pem: bytes, agents: list[tuple[str, str, SigningKey]], tmp: Path, uploaders: int
    ) -> None:
        self.addr, self.fp, self.pem, self.agents, self.tmp = addr, fp, pem, agents, tmp
        self.pool = ThreadPoolExecutor(uploaders)
        self.ready = 0
        self.answered = 0
        self.park = False  # park on the doorbell when idle, as the daemon does (--park)
        self.parked = 0
        self.errors: list[str] = []
        self._local = threading.local()

    def _channel(self) -> grpc.Channel:
        ch = getattr(self._local, "ch", None)
        if ch is None:
            ch = self._local.ch = open_channel(parse_address(self.addr), ca_fingerprint=self.fp)
        return ch

    def _answer(self, agent_id: str, hostname: str, key: SigningKey, request_id: str, busy: bool) -> None:
        try:
            written = _bundle(self.tmp / "out" / agent_id, key, agent_id, hostname, request_id, busy)
            target = UploadTarget(key=key, agent_id=agent_id)
            upload_bundle(self._channel(), written.path, bundle_id=written.bundle_id, target=target)
            written.path.unlink()
            self.answered += 1
        except Exception as exc:  # a benchmark reports, it does not hide
            self.errors.append(f"{agent_id}: {exc!r}")
            print(f"answer failed: {agent_id}: {exc!r}", file=sys.stderr, flush=True)

    async def run(self) -> None:
        creds = grpc.ssl_channel_credentials(root_certificates=self.pem)
        loop = asyncio.get_running_loop()
        channels = []

        async def one(stub: Any, n: int, agent_id: str, hostname: str, key: SigningKey) -> None:
            call, accepted = await handshake(stub, agent_id, key)
            assert accepted.WhichOneof("msg") == "accepted"
            offer = accepted.accepted
            counted = False
            reading: asyncio.Future[Any] | None = None
            while True:
                if not self.park:
                    if not counted:
                        self.ready, counted = self.ready + 1, True
                    msg = await call.read()
                else:  # as the daemon does: idle for park_after_s, then the doorbell
                    # The read stays pending across the idle check (cancelling a grpc.aio
                    # read cancels its call).
                    reading = reading or asyncio.ensure_future(call.read())
                    done, _ = await asyncio.wait({reading}, timeout=offer.park_after_s)
                    if not done:
                        bell, _refusals = await open_doorbell(
                            parse_address(self.addr), offer.doorbell_port, self.fp, key, agent_id
                        )
                        # As the daemon: end the stream from this side, and still take what
                        # the collector sent before it saw the end.
                        await call.done_writing()
                        sent = []
                        while (msg := await reading) is not grpc.aio.EOF:
                            if msg.WhichOneof("msg") == "snapshot_request":
                                sent.append(msg.snapshot_request.request_id)
                            reading = asyncio.ensure_future(call.read())
                        reading = None
                        for rid in sent:
                            loop.run_in_executor(self.pool, self._answer, agent_id, hostname, key, rid, n % 50 == 7)
                        if not counted:
                            self.ready, counted = self.ready + 1, True
                        if not sent:
                            self.parked += 1
                            why = await bell.wait()
                            self.parked -= 1
                            if why != "ring":
                                self.errors.append(f"{agent_id}: doorbell {why}")
                        call, accepted = await handshake(stub, agent_id, key)  # rung (or doorbell gone): back
                        await bell.close()
                        continue
                    msg, reading = reading.result(), None
                if msg is grpc.aio.EOF:
                    return
                if msg.WhichOneof("msg") == "snapshot_request":
                    rid = msg.snapshot_request.request_id
                    loop.run_in_executor(self.pool, self._answer, agent_id, hostname, key, rid, n % 50 == 7)
                elif msg.WhichOneof("msg") == "probe":
                    answer = collector_pb2.ProbeAnswer(nonce=msg.probe.nonce)
                    await call.write(collector_pb2.AgentMessage(probe_answer=answer))

        tasks = []
        for i in range(0, len(self.agents), AGENTS_PER_CONNECTION):
            ch = grpc.aio.secure_channel(
                self.addr, creds, options=[("grpc.ssl_target_name_override", PINNED_TARGET_NAME)]
            )
            channels.append(ch)
            stub = collector_pb2_grpc.ChannelStub(ch)
            for n, (a, h, k) in enumerate(self.agents[i : i + AGENTS_PER_CONNECTION], start=i):
                tasks.append(asyncio.ensure_future(one(stub, n, a, h, k)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            for ch in channels:
                await ch.close()


def _query_loop(addr: str, fp: str, token: str, stop: threading.Event, out: list[float]) -> None:
    md = (("authorization", f"Bearer {token}"),)
    with open_channel(parse_address(addr), ca_fingerprint=fp) as ch:
        stub = collector_pb2_grpc.QueryStub(ch)
        while not stop.is_set():
            t = time.perf_counter()
            stub.ListHosts(collector_pb2.ListHostsRequest(page_size=50), metadata=md, timeout=60)
            out.append((time.perf_counter() - t) * 1000)
            stop.wait(0.01)  # an engineer's client, not a flood: about 100 calls a second at most


def _p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[98] if len(xs) >= 2 else xs[0]


def _real_agents(
    store: Store, addr: str, fp: str, tmp: Path, n: int
) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    """``n`` real agents enrolled with ``role=web`` (each its own home, facts allowed), started."""
    ids, procs = [], []
    for i in range(n):
        tok, _ = store.create_token("enroll", label=f"bench-real-{i}", ttl=dt.timedelta(hours=2), max_uses=1)
        home = AgentHome(tmp / f"agent-{i}")
        key = home.key()
        with open_channel(parse_address(addr), ca_fingerprint=fp) as ch:
            resp = enroll(ch, token=tok, key=key, hostname=f"real-{i}", agent_version="bench", labels=("role=web",))
        home.save_enrollment(Enrollment(resp.agent_id, addr, fp, key.fingerprint))
        (home.root / "policy.json").write_text(json.dumps({"allowed_scopes": ["facts"], "rate_limit_per_hour": 0}))
        ids.append(resp.agent_id)
        procs.append(
            subprocess.Popen(
                [str(BIN / "casefile-agent"), "--home", str(home.root)],
                stdout=(tmp / f"agent-{i}.log").open("w"),
                stderr=subprocess.STDOUT,
                env={**os.environ, "CASEFILE_LOG_LEVEL": "WARNING"},
            )
        )
    return ids, procs


def _cpu_s(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (and its children, living and reaped)."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *(proc.children(recursive=True) if children else [])]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + (t.children_user + t.children_system if p is proc and children else 0.0)
    return total


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=200, help="connected agents in all, real ones included")
    ap.add_argument("--real-agents", type=int, default=0, help="of those, real casefile-agent processes")
    ap.add_argument("--runs", type=int, default=3, help="hunts, one after another")
    ap.add_argument("--uploaders", type=int, default=8, help="threads the simulated agents upload from")
    ap.add_argument("--max-seconds", type=float, default=540, help="the whole run ends by then, whatever its state")
    ap.add_argument("--hunt-timeout", type=float, default=120, help="a hunt not done by then fails the run")
    ap.add_argument(
        "--park",
        action="store_true",
        help="agents idle 1 s park on the doorbell (collector --park-after 1), so the hunt rings them",
    )
    args = ap.parse_args()
    if not 0 <= args.real_agents <= min(args.agents, 20):
        raise SystemExit("--real-agents: 0..20 and at most --agents")
    print(machine_line(), flush=True)  # before anything starts: the figures scale with it
    tmp = Path(tempfile.mkdtemp(prefix="bench-hunt-"))
    data = tmp / "data"
    addr = f"127.0.0.1:{_free_port()}"
    ready_file = tmp / "ready.json"
    coll = subprocess.Popen(
        [
            str(BIN / "casefile-collector"),
            "serve",
            "--address",
            addr,
            "--data-dir",
            str(data),
            "--ready-file",
            str(ready_file),
            "--park-after",
            "1" if args.park else "0",
        ],
        stdout=(tmp / "collector.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    procs: list[subprocess.Popen[bytes]] = []

    def give_up() -> None:
        print(f"--max-seconds {args.max_seconds:g} reached: stopping", file=sys.stderr, flush=True)
        _stop([*procs, coll])
        os._exit(2)

    watchdog = threading.Timer(args.max_seconds, give_up)
    watchdog.daemon = True
    watchdog.start()
    sim_loop = asyncio.new_event_loop()
    sim_task = None
    sim_dir: Path | None = None
    try:
        _wait(ready_file.exists, 60, "collector start")
        fp = json.loads(ready_file.read_text())["fingerprint"]
        store = Store.open(f"sqlite:///{data / 'casefile.db'}")
        agents = []
        for i in range(args.agents - args.real_agents):
            key = SigningKey.generate()
            rec = store.create_agent(key.public.raw, fingerprint_of(key.public.raw), f"web-{i:04d}", None)
            store.set_agent_labels(rec.id, {"role": "web"})
            agents.append((rec.id, rec.hostname, key))
        # The simulated agents write their bundles in memory when the machine has a tmpfs:
        # a real agent writes on its own disk, not on the collector's.
        shm = Path("/dev/shm")
        sim_dir = Path(tempfile.mkdtemp(prefix="bench-hunt-sim-", dir=shm if shm.is_dir() else tmp))
        fleet = Fleet(addr, fp, fetch_certificate(parse_address(addr)), agents, sim_dir, args.uploaders)
        fleet.park = args.park
        threading.Thread(target=sim_loop.run_forever, daemon=True).start()
        t_connect = time.perf_counter()
        sim_task = asyncio.run_coroutine_threadsafe(fleet.run(), sim_loop)
        try:
            _wait(lambda: fleet.ready >= len(agents), 300, f"{len(agents)} simulated agents connected")
        except SystemExit:
            print(
                f"ready {fleet.ready}, parked {fleet.parked}, errors {len(fleet.errors)}: {fleet.errors[:3]}",
                file=sys.stderr,
                flush=True,
            )
            raise
        connect_s = time.perf_counter() - t_connect
        real_ids, real_procs = _real_agents(store, addr, fp, tmp, args.real_agents)
        procs += real_procs

        def real_connected() -> bool:
            return all(store.list_audit(1, actor=a, action="channel.connect", outcome="ok") for a in real_ids)

        _wait(real_connected, 90, f"{len(real_ids)} real agents connected")
        eng, _ = store.create_token("engineer", role="engineer", label="bench-q", ttl=dt.timedelta(hours=2))
        md = lambda tok: (("authorization", f"Bearer {tok}"),)  # noqa: E731
        done_s, real_s, create_ms, results_ms, during, baseline = [], [], [], [], [], []
        cpu_coll: list[float] = []
        cpu_bench: list[float] = []
        per_run: list[tuple[float, float]] = []
        with open_channel(parse_address(addr), ca_fingerprint=fp) as ch:
            hunt_stub = collector_pb2_grpc.HuntStub(ch)
            for run in range(args.runs):
                hunter, _ = store.create_token(
                    "engineer", role="engineer", label=f"bench-{run}", ttl=dt.timedelta(hours=2)
                )
                if args.park:  # every agent parked before the hunt: it rings them all

                    def all_parked() -> bool:
                        real = all(store.list_audit(1, actor=a)[0].action == "channel.park" for a in real_ids)
                        return real and fleet.parked == len(agents)

                    _wait(all_parked, 120, "all agents parked", every=0.2)
                stop, lat = threading.Event(), []
                q = threading.Thread(target=_query_loop, args=(addr, fp, eng, stop, lat))
                before = fleet.answered
                cpu0 = (_cpu_s(coll.pid), _cpu_s(os.getpid(), children=False))
                q.start()
                time.sleep(0.5)  # the engineer's loop is running before the hunt starts
                wall0, t0 = time.time(), time.perf_counter()
                status = hunt_stub.CreateHunt(
                    collector_pb2.HuntSpec(labels=["role=web"], case_id=f"SR-{run}", reason="bench"),
                    metadata=md(hunter),
                    timeout=args.hunt_timeout,
                )
                create_ms.append((time.perf_counter() - t0) * 1000)
                assert len(status.hosts) == args.agents, (len(status.hosts), args.agents)
                final: list[Any] = []

                def finished(hunt_id: str = status.hunt_id, final: list[Any] = final) -> bool:
                    final[:] = store.hunt_live_requests(hunt_id)
                    bad = [r for r in final if r.state in ("denied", "failed", "expired")]
                    if bad:
                        raise SystemExit(f"hunt {hunt_id}: {bad[0].agent_id} {bad[0].state}: {bad[0].detail}")
                    return all(r.state == "done" for r in final)

                # Every half second: the time taken is read from the rows, and reading a
                # thousand rows more often took CPU the collector shares.
                try:
                    _wait(finished, args.hunt_timeout, f"hunt {status.hunt_id} all done", every=0.5)
                except SystemExit:
                    late = [r for r in final if r.state != "done"]
                    states = sorted({r.state for r in late})
                    print(
                        f"not done: {len(late)} ({', '.join(states)}); e.g. "
                        + "; ".join(f"{r.agent_id} {r.state} {r.detail!r}" for r in late[:5])
                        + f"; simulated agents parked now: {fleet.parked}",
                        file=sys.stderr,
                        flush=True,
                    )
                    raise
                stop.set()
                q.join()
                took = max(r.updated_at_us for r in final) / 1e6 - wall0
                done_s.append(took)
                cpu_coll.append(_cpu_s(coll.pid) - cpu0[0])
                cpu_bench.append(_cpu_s(os.getpid(), children=False) - cpu0[1])
                if real_ids:
                    real_s.append(max(r.updated_at_us for r in final if r.agent_id in real_ids) / 1e6 - wall0)
                during += lat
                assert fleet.answered - before == len(agents), (fleet.answered, before, fleet.errors[:3])
                # Baseline: the same Query loop as long, the agents connected and idle.
                stop, base = threading.Event(), []
                q = threading.Thread(target=_query_loop, args=(addr, fp, eng, stop, base))
                q.start()
                time.sleep(max(took, 5.0))
                stop.set()
                q.join()
                baseline += base
                per_run.append((_p99(lat), _p99(base)))
                t = time.perf_counter()
                res = hunt_stub.GetHuntResults(
                    collector_pb2.HuntRef(hunt_id=status.hunt_id), metadata=md(hunter), timeout=args.hunt_timeout
                )
                results_ms.append((time.perf_counter() - t) * 1000)
                doc = json.loads(res.json)
                cpu = next(m for m in doc["metrics"] if m["metric"] == "cpu_percent")
                print(
                    f"run {run + 1}: {len(doc['bundles'])} bundles in {took:.2f} s (CreateHunt "
                    f"{create_ms[-1]:.0f} ms{f', last real agent {real_s[-1]:.2f} s' if real_ids else ''}); "
                    f"ListHosts p99 {per_run[-1][0]:.1f} ms during, {per_run[-1][1]:.1f} ms idle; cpu outliers "
                    f"{len(cpu['outliers'])} (expected {sum(1 for n in range(len(agents)) if n % 50 == 7)})",
                    flush=True,
                )
        if fleet.errors:
            print("errors:", fleet.errors[:5])
        print(
            f"agents: {args.agents} {'parked on the doorbell before each hunt' if args.park else 'connected'} "
            f"({len(agents)} simulated, bundles written in {sim_dir.parent}, "
            f"connected in {connect_s:.1f} s; "
            f"{len(real_ids)} real casefile-agent processes), SQLite, one collector; uploader threads "
            f"{args.uploaders}"
        )
        print(
            f"CPU seconds per hunt (until all done and the Query loop stopped): collector with its verifier "
            f"processes {statistics.median(cpu_coll):.1f} ({min(cpu_coll):.1f}-{max(cpu_coll):.1f}), this process "
            f"(simulated agents, Query client, polling) {statistics.median(cpu_bench):.1f}"
        )
        print("| figure | median | min | max | n |")
        print("|---|---|---|---|---|")
        print(
            f"| hunt create → all bundles stored, s | {statistics.median(done_s):.2f} | {min(done_s):.2f} | "
            f"{max(done_s):.2f} | {len(done_s)} |"
        )
        if real_s:
            print(
                f"| hunt create → last real agent's bundle stored, s | {statistics.median(real_s):.2f} | "
                f"{min(real_s):.2f} | {max(real_s):.2f} | {len(real_s)} |"
            )
        print(
            f"| CreateHunt call (select, record, deliver), ms | {statistics.median(create_ms):.0f} | "
            f"{min(create_ms):.0f} | {max(create_ms):.0f} | {len(create_ms)} |"
        )
        print(
            f"| bundles stored per second | {args.agents / statistics.median(done_s):.0f} | "
            f"{args.agents / max(done_s):.0f} | {args.agents / min(done_s):.0f} | {len(done_s)} |"
        )
        print(
            f"| hunt results (compare all bundles), ms | {statistics.median(results_ms):.0f} | "
            f"{min(results_ms):.0f} | {max(results_ms):.0f} | {len(results_ms)} |"
        )
        print(
            f"| ListHosts p99 ms during each hunt | {statistics.median(p for p, _ in per_run):.1f} | "
            f"{min(p for p, _ in per_run):.1f} | {max(p for p, _ in per_run):.1f} | {len(per_run)} |"
        )
        print(
            f"| ListHosts p50 / p99 ms during hunts | {statistics.median(during):.1f} / {_p99(during):.1f} | | | "
            f"{len(during)} |"
        )
        print(
            f"| ListHosts p50 / p99 ms idle (baseline) | {statistics.median(baseline):.1f} / "
            f"{_p99(baseline):.1f} | | | {len(baseline)} |"
        )
        print(f"| p99 ratio during / baseline | {_p99(during) / _p99(baseline):.1f}x | | | |")
    finally:
        watchdog.cancel()
        if sim_task is not None:
            sim_task.cancel()
        _stop([*procs, coll])
        if sim_dir is not None:
            shutil.rmtree(sim_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
