"""Would grpclib hold the agent daemon's idle RSS? One Channel stream, h2stream against grpclib.

The daemon speaks gRPC over ``h2`` by hand (``agent/daemon/h2stream.py``) to stay ~15 MiB
below grpcio (``bench_agent_idle.py``). grpclib is a maintained pure-Python gRPC on the
same ``h2``. Here two daemon-like processes run side by side, each enrolled as an agent
of one real collector on loopback, each importing what ``casefile-agent`` imports
(``agent.daemon``) and then holding one ``Channel.Connect`` stream through the real
handshake (pinned TLS, Ed25519 over the collector's nonce, ``ChannelAccepted``):

- ``h2stream``: ``agent.daemon.h2stream.BidiStream``, as the daemon does;
- ``grpclib``: ``grpclib.client.Channel`` with the same pinned TLS context.

After ``--warmup`` seconds connected, VmRSS (and its anonymous / file-backed parts) is
read from /proc; each round starts fresh processes. Rounds alternate which one starts
first. The grpclib process also carries ``agent.daemon.h2stream`` (imported by
``agent.daemon``), so its figure overstates a daemon that used grpclib instead by that
module's few hundred KiB. grpclib is not a dependency of Casefile; this script needs it
installed (``pip install grpclib``) and says so otherwise.

    .venv/bin/python benchmarks/bench_grpclib_idle.py --rounds 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from agent.state import AgentHome, Enrollment
from agent.transport import enroll, open_channel, parse_address
from collector.storage import Store

BIN = Path(sys.executable).parent
HOLDER = r"""
import asyncio, ssl, sys
from pathlib import Path
import agent.daemon  # what casefile-agent loads, with or without the stream
from agent.state import AgentHome
from agent.transport.channel_proof import channel_message
from agent.transport.connect import PINNED_TARGET_NAME, check_pin, fetch_certificate, parse_address
from protos import collector_pb2

variant, home = sys.argv[1], AgentHome(Path(sys.argv[2]))
enrollment, key = home.enrollment(), home.key()
address = parse_address(enrollment.collector)
PATH = "/casefile.v1.Channel/Connect"

def hello():
    return collector_pb2.AgentMessage(hello=collector_pb2.ChannelHello(agent_id=enrollment.agent_id))

def answer(challenge):
    sig = key.sign(channel_message(bytes(challenge.challenge.nonce), enrollment.agent_id))
    return collector_pb2.AgentMessage(challenge_response=collector_pb2.ChallengeResponse(signature=sig))

async def with_h2stream():
    from agent.daemon.h2stream import BidiStream
    call = await BidiStream.open(address, PATH, pin=enrollment.ca_fingerprint, user_agent="bench")
    await call.write(hello().SerializeToString())
    challenge = collector_pb2.CollectorMessage.FromString(await call.read())
    await call.write(answer(challenge).SerializeToString())
    accepted = collector_pb2.CollectorMessage.FromString(await call.read())
    assert accepted.WhichOneof("msg") == "accepted", accepted
    print("connected", flush=True)
    while await call.read() is not None:
        pass

async def with_grpclib():
    from grpclib.client import Channel
    from grpclib.config import Configuration
    from grpclib.const import Cardinality
    pem = await asyncio.to_thread(fetch_certificate, address)
    check_pin(address, pem, enrollment.ca_fingerprint)
    ctx = ssl.create_default_context(cadata=pem.decode("ascii"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    config = Configuration(ssl_target_name_override=PINNED_TARGET_NAME, _keepalive_time=30.0,
                           _keepalive_timeout=10.0, _keepalive_permit_without_calls=True)
    channel = Channel(address.host, address.port, ssl=ctx, config=config)
    stream = channel.request(PATH, Cardinality.STREAM_STREAM, collector_pb2.AgentMessage,
                             collector_pb2.CollectorMessage)
    async with stream as call:
        await call.send_message(hello())
        await call.send_message(answer(await call.recv_message()))
        accepted = await call.recv_message()
        assert accepted.WhichOneof("msg") == "accepted", accepted
        print("connected", flush=True)
        while await call.recv_message() is not None:
            pass

asyncio.run(with_h2stream() if variant == "h2stream" else with_grpclib())
"""
VARIANTS = ("h2stream", "grpclib")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out: {what}")


def _rss(pid: int) -> tuple[float, float, float]:
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out["VmRSS"], out["RssAnon"], out["RssFile"]


def _enroll(store: Store, addr: str, fp: str, root: Path, hostname: str) -> str:
    home = AgentHome(root)
    tok, _ = store.create_token("enroll", label=hostname, ttl=dt.timedelta(hours=1), max_uses=1)
    key = home.key()
    with open_channel(parse_address(addr), ca_fingerprint=fp) as ch:
        resp = enroll(ch, token=tok, key=key, hostname=hostname, agent_version="bench")
    home.save_enrollment(Enrollment(resp.agent_id, addr, fp, key.fingerprint))
    return str(resp.agent_id)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} MiB ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds connected before RSS is read")
    args = ap.parse_args()
    if importlib.util.find_spec("grpclib") is None:
        raise SystemExit("grpclib is not installed: pip install grpclib (it is not a Casefile dependency)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-grpclib-"))
    addr = f"127.0.0.1:{_free_port()}"
    ready = tmp / "ready.json"
    coll = subprocess.Popen(
        [str(BIN / "casefile-collector"), "serve", "--address", addr, "--data-dir", str(tmp / "data"),
         "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
    try:
        _wait(ready.exists, 60, "collector start")
        fp = json.loads(ready.read_text())["fingerprint"]
        store = Store.open(f"sqlite:///{tmp / 'data' / 'casefile.db'}")
        env = {**os.environ, "CASEFILE_LOG_LEVEL": "WARNING"}
        for n in range(args.rounds):
            order = VARIANTS if n % 2 == 0 else VARIANTS[::-1]
            procs: dict[str, subprocess.Popen[str]] = {}
            try:
                for variant in order:
                    root = tmp / f"{variant}-{n}"
                    agent_id = _enroll(store, addr, fp, root, f"{variant}-{n}")
                    proc = subprocess.Popen([sys.executable, "-c", HOLDER, variant, str(root)], env=env,
                                            stdout=subprocess.PIPE, text=True)
                    procs[variant] = proc
                    connected = partial(store.list_audit, 5, actor=agent_id, action="channel.connect", outcome="ok")
                    _wait(connected, 60, f"{variant} connected")
                    assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
                time.sleep(args.warmup)
                for variant, proc in procs.items():
                    if proc.poll() is not None:
                        raise SystemExit(f"{variant} holder exited with {proc.returncode}")
                    results[variant].append(_rss(proc.pid))
            finally:
                for proc in procs.values():
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
        store.close()
    finally:
        coll.send_signal(signal.SIGTERM)
        coll.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{args.rounds} rounds, {args.warmup:g} s connected before reading; {os.cpu_count()} cores; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end")
    print("| stream through | VmRSS, median (min-max) | anon | file-backed |")
    print("|---|---|---|---|")
    for variant in VARIANTS:
        rows = results[variant]
        print(f"| {variant} | {_spread([r[0] for r in rows])} | {_spread([r[1] for r in rows])} "
              f"| {_spread([r[2] for r in rows])} |")
    h2 = statistics.median(r[0] for r in results["h2stream"])
    lib = statistics.median(r[0] for r in results["grpclib"])
    print(f"grpclib / h2stream: {lib / h2:.3f} ({lib - h2:+.1f} MiB)")


if __name__ == "__main__":
    main()
