"""Agent daemon at rest: RSS and CPU of ``casefile agent run`` holding its channel.

Baseline in the same run: a bare Python process that imports grpc, psutil and
cryptography and then sleeps (what any Python agent with these libraries costs).
The daemon is connected to a real collector process on loopback and receives no
requests. RSS is sampled at the end; CPU is (user+sys) over ``--seconds``.

    .venv/bin/python benchmarks/bench_agent_idle.py --seconds 600
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from agent.state import AgentHome, Enrollment
from agent.transport import enroll, open_channel, parse_address
from collector.storage import Store

BIN = Path(sys.executable).parent
BASELINE = "import grpc, psutil, cryptography.hazmat.primitives.asymmetric.ed25519, time; time.sleep(10**6)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _measure(proc: subprocess.Popen[bytes], seconds: float, warmup: float) -> tuple[float, float]:
    p = psutil.Process(proc.pid)
    time.sleep(warmup)
    c0 = p.cpu_times()
    t0 = time.monotonic()
    time.sleep(seconds)
    c1 = p.cpu_times()
    cpu = (c1.user + c1.system - c0.user - c0.system) / (time.monotonic() - t0) * 100
    return p.memory_info().rss / 2**20, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    addr = f"127.0.0.1:{_free_port()}"
    ready = tmp / "ready.json"
    coll = subprocess.Popen(
        [str(BIN / "casefile-collector"), "serve", "--address", addr, "--data-dir", str(tmp / "data"),
         "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        while not ready.exists():
            time.sleep(0.05)
        fp = json.loads(ready.read_text())["fingerprint"]
        with Store.open(f"sqlite:///{tmp / 'data' / 'casefile.db'}") as store:
            tok, _ = store.create_token("enroll", label="idle", ttl=dt.timedelta(hours=1), max_uses=1)
        home = AgentHome(tmp / "home")
        key = home.key()
        with open_channel(parse_address(addr), ca_fingerprint=fp) as ch:
            resp = enroll(ch, token=tok, key=key, hostname="idle", agent_version="bench")
        home.save_enrollment(Enrollment(resp.agent_id, addr, fp, key.fingerprint))
        env = {**os.environ, "CASEFILE_LOG_LEVEL": "WARNING"}
        agent = subprocess.Popen([str(BIN / "casefile-agent"), "--home", str(home.root)], env=env)
        base = subprocess.Popen([sys.executable, "-c", BASELINE])
        procs += [agent, base]
        # Both measured over the same wall-clock window, side by side.
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(2) as pool:
            fa = pool.submit(_measure, agent, args.seconds, args.warmup)
            fb = pool.submit(_measure, base, args.seconds, args.warmup)
            (rss_a, cpu_a), (rss_b, cpu_b) = fa.result(), fb.result()
        print(f"idle over {args.seconds:g} s (after {args.warmup:g} s warm-up)")
        print("| process | RSS MiB | CPU % of a core |")
        print("|---|---|---|")
        print(f"| casefile-agent (connected, idle) | {rss_a:.1f} | {cpu_a:.3f} |")
        print(f"| baseline: python + grpc + psutil + cryptography | {rss_b:.1f} | {cpu_b:.3f} |")
        print(f"| ratio | {rss_a / rss_b:.2f} | — |")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        coll.send_signal(signal.SIGTERM)
        coll.wait(30)


if __name__ == "__main__":
    main()
