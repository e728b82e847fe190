"""Agent daemon at rest: RSS and CPU of ``casefile-agent`` holding its channel, before and after a snapshot.

Baseline in the same run: a bare Python process that imports grpc, psutil and
cryptography and then sleeps (DESIGN §10's reference: what any Python agent with these
libraries costs). A second reference: the least Python process that holds the same
stream through grpcio — grpc.aio over TLS with the pinned certificate, the handshake
signed with an Ed25519 key, messages hand-encoded, no Casefile code — enrolled as an
agent of its own. It is what the daemon's channel cost before it moved to h2
(``agent/daemon/h2stream.py``), and what it would cost again on grpcio. The daemon is connected
to a real collector process on loopback. Two windows of ``--seconds`` each, the
references measured side by side in both:

1. connected and idle, no request yet;
2. after one live snapshot (facts scope) was collected, uploaded and stored, and the
   collection child the daemon starts for it has exited again (it lingers for the
   daemon's ``worker_linger_s``, 60 s by default, waiting for a follow-up request).

RSS is read at the end of a window (VmRSS; RssAnon and RssFile, its anonymous and
file-backed parts, from /proc); CPU is (user+sys) over the window. RSS counts the pages
of shared libraries (grpc, cryptography, libpython) this process has mapped, which
depends on the page cache and on memory pressure: compare with the baseline of the
same run. USS (pages no other process shares) is printed for information only.

    .venv/bin/python benchmarks/bench_agent_idle.py --seconds 600
    .venv/bin/python benchmarks/bench_agent_idle.py --seconds 600 --triggers   # with policy triggers

``--triggers`` writes a policy with one trigger of each kind (five thresholds that do not
fire in a quiet window, an OOM kill, a kernel oops and a failed unit), all checked after
every recorder sample: their cost is in the daemon's CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psutil

from agent.state import AgentHome, Enrollment
from agent.transport import enroll, open_channel, parse_address
from agent.transport.live_states import state_of
from collector.storage import Store
from protos import collector_pb2, collector_pb2_grpc

BIN = Path(sys.executable).parent
# One trigger of each kind; the thresholds need a full day held, so none fires in a window.
TRIGGERS = [
    *({"name": w, "when": w, "above_pct": 100, "for_s": 86400} for w in ("cpu", "iowait", "memory", "swap", "disk")),
    *({"name": w, "when": w} for w in ("oom_kill", "kernel_oops", "unit_failed")),
]
BASELINE = "import grpc, psutil, cryptography.hazmat.primitives.asymmetric.ed25519, time; time.sleep(10**6)"
FLOOR = r"""
import asyncio, socket, ssl, sys
import grpc, grpc.aio
from cryptography.hazmat.primitives import serialization

host, port, agent_id, key_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
key = serialization.load_pem_private_key(open(key_path, "rb").read(), None)

def ld(number, data):  # one length-delimited protobuf field (all payloads here are < 128 bytes)
    return bytes([number << 3 | 2, len(data)]) + data

def fetch_pem():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port)) as raw, ctx.wrap_socket(raw, server_hostname="casefile-collector") as t:
        return ssl.DER_cert_to_PEM_cert(t.getpeercert(True)).encode()

async def main():
    pem = await asyncio.to_thread(fetch_pem)
    options = [("grpc.ssl_target_name_override", "casefile-collector"), ("grpc.keepalive_time_ms", 30000),
               ("grpc.keepalive_timeout_ms", 10000), ("grpc.keepalive_permit_without_calls", 1),
               ("grpc.http2.max_pings_without_data", 0)]
    channel = grpc.aio.secure_channel(f"{host}:{port}", grpc.ssl_channel_credentials(pem), options=options)
    call = channel.stream_stream("/casefile.v1.Channel/Connect")()
    await call.write(ld(1, ld(1, agent_id.encode())))
    challenge = await call.read()  # CollectorMessage{challenge: Challenge{nonce}}: 2 + 2 header bytes
    nonce = challenge[4:]
    await call.write(ld(2, ld(1, key.sign(b"casefile-channel-v1\n" + nonce + b"\n" + agent_id.encode()))))
    await call.read()  # accepted
    while await call.read() is not grpc.aio.EOF:
        pass

asyncio.run(main())
"""
MIB = 2**20


@dataclass(frozen=True)
class Sample:
    rss: float  # MiB
    anon: float
    file: float
    uss: float
    cpu: float  # % of one core over the window


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Callable[[], object], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise SystemExit(f"timed out: {what}")


def _status_mib(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


def _measure(pid: int, seconds: float) -> Sample:
    p = psutil.Process(pid)
    c0 = p.cpu_times()
    t0 = time.monotonic()
    time.sleep(seconds)
    c1 = p.cpu_times()
    cpu = max(0.0, c1.user + c1.system - c0.user - c0.system) / (time.monotonic() - t0) * 100
    st = _status_mib(pid)
    return Sample(st["VmRSS"], st["RssAnon"], st["RssFile"], p.memory_full_info().uss / MIB, cpu)


def _side_by_side(pids: list[int], seconds: float) -> list[Sample]:
    with cf.ThreadPoolExecutor(len(pids)) as pool:
        return list(pool.map(lambda pid: _measure(pid, seconds), pids))


def _enroll(store: Store, addr: str, fp: str, home: AgentHome, hostname: str) -> str:
    tok, _ = store.create_token("enroll", label=hostname, ttl=dt.timedelta(hours=1), max_uses=1)
    key = home.key()
    with open_channel(parse_address(addr), ca_fingerprint=fp) as ch:
        resp = enroll(ch, token=tok, key=key, hostname=hostname, agent_version="bench")
    home.save_enrollment(Enrollment(resp.agent_id, addr, fp, key.fingerprint))
    return str(resp.agent_id)


def _snapshot(addr: str, fp: str, token: str, agent_id: str, agent_pid: int) -> tuple[float, float, float, float]:
    """One facts snapshot: (request → stored ms, peak RSS of the daemon, of its child, number of children)."""
    peaks = {"agent": 0.0, "child": 0.0}
    children: set[int] = set()
    stop = threading.Event()

    def sample() -> None:
        p = psutil.Process(agent_pid)
        while not stop.is_set():
            peaks["agent"] = max(peaks["agent"], p.memory_info().rss / MIB)
            for child in p.children():
                children.add(child.pid)
                with contextlib.suppress(psutil.NoSuchProcess):
                    peaks["child"] = max(peaks["child"], child.memory_info().rss / MIB)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    md = (("authorization", f"Bearer {token}"),)
    try:
        with open_channel(parse_address(addr), ca_fingerprint=fp) as ch:
            t0 = time.perf_counter()
            req = collector_pb2.SnapshotRequestSpec(host=agent_id, scopes=["facts"], reason="bench idle")
            events = list(collector_pb2_grpc.QueryStub(ch).RequestSnapshot(req, metadata=md, timeout=120))
            ms = (time.perf_counter() - t0) * 1000
    finally:
        stop.set()
        sampler.join()
    if not events or state_of(events[-1]) != "done":
        raise SystemExit(f"snapshot did not finish: {events[-1:]}")
    return ms, peaks["agent"], peaks["child"], float(len(children))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="length of each of the two idle windows")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--triggers", action="store_true", help="the daemon's policy with triggers of every kind")
    ap.add_argument("--park-after", type=int, default=300,
                    help="the collector's --park-after: an idle daemon parks on its doorbell (0: keeps its stream)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    addr = f"127.0.0.1:{_free_port()}"
    ready = tmp / "ready.json"
    load0 = os.getloadavg()
    coll = subprocess.Popen(
        [str(BIN / "casefile-collector"), "serve", "--address", addr, "--data-dir", str(tmp / "data"),
         "--ready-file", str(ready), "--park-after", str(args.park_after)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _wait(ready.exists, 60, "collector start")
        fp = json.loads(ready.read_text())["fingerprint"]
        store = Store.open(f"sqlite:///{tmp / 'data' / 'casefile.db'}")
        eng, _ = store.create_token("engineer", role="engineer", label="bench", ttl=dt.timedelta(hours=2))
        home, floor_home = AgentHome(tmp / "home"), AgentHome(tmp / "floor")
        agent_id = _enroll(store, addr, fp, home, "idle")
        floor_id = _enroll(store, addr, fp, floor_home, "floor")
        env = {**os.environ, "CASEFILE_LOG_LEVEL": "WARNING"}
        if args.triggers:
            (home.root / "policy.json").write_text(json.dumps({"triggers": TRIGGERS}))
        agent = subprocess.Popen([str(BIN / "casefile-agent"), "--home", str(home.root)], env=env)
        base = subprocess.Popen([sys.executable, "-c", BASELINE])
        host, port = addr.rsplit(":", 1)
        floor = subprocess.Popen([sys.executable, "-c", FLOOR, host, port, floor_id, str(floor_home.key_path)])
        procs += [agent, base, floor]
        for who in (agent_id, floor_id):
            connected = partial(store.list_audit, 5, actor=who, action="channel.connect", outcome="ok")
            _wait(connected, 60, f"{who} connected")
        time.sleep(args.warmup)
        parks = partial(store.list_audit, 50, actor=agent_id, action="channel.park", outcome="ok")
        # All measured over the same wall-clock window, side by side.
        before, floor1, base1 = _side_by_side([agent.pid, floor.pid, base.pid], args.seconds)
        parked1 = len(parks())

        ms, peak_agent, peak_child, n_children = _snapshot(addr, fp, eng, agent_id, agent.pid)
        parent = psutil.Process(agent.pid)
        lingered = _wait(lambda: not parent.children(), 600, "collection child to exit")
        time.sleep(args.warmup)
        after, floor2, base2 = _side_by_side([agent.pid, floor.pid, base.pid], args.seconds)
        parked2 = len(parks())
        store.close()

        def row(name: str, s: Sample) -> str:
            return f"| {name} | {s.rss:.1f} | {s.anon:.1f} / {s.file:.1f} | {s.uss:.1f} | {s.cpu:.3f} |"

        print(f"policy triggers: {'on, one of each kind' if args.triggers else 'none'}; "
              f"two idle windows of {args.seconds:g} s (after {args.warmup:g} s warm-up each); "
              f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at start, "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at end; {os.cpu_count()} cores; "
              f"collector --park-after {args.park_after}: the daemon parked {parked1} time(s) by the end of "
              f"window 1, {parked2} by the end of window 2")
        print("| process | RSS MiB | of which anon / file-backed MiB | USS MiB (info) | CPU % of a core |")
        print("|---|---|---|---|---|")
        print(row("casefile-agent, connected, idle (window 1)", before))
        print(row("casefile-agent, idle again after one live snapshot (window 2)", after))
        print(row("reference: bare grpc.aio client holding the same stream (window 1)", floor1))
        print(row("grpc.aio reference (window 2)", floor2))
        print(row("baseline: python + grpc + psutil + cryptography (window 1)", base1))
        print(row("baseline (window 2)", base2))
        print(f"| ratio to baseline (window 1 / window 2) | {before.rss / base1.rss:.2f} / {after.rss / base2.rss:.2f} "
              "| — | — | — |")
        print(f"snapshot (facts): request → stored {ms:.0f} ms, first after idle (child started cold); "
              f"peak RSS during it: daemon {peak_agent:.1f} MiB, collection child {peak_child:.1f} MiB "
              f"({n_children:.0f} child process(es)); the child exited {lingered:.0f} s after the snapshot")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        coll.send_signal(signal.SIGTERM)
        coll.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
