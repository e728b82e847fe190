"""Where the Python side of an idle agent channel's memory is: tracemalloc in the collector.

A diagnostic, not a figure for the table (tracemalloc slows everything and counts only
Python's allocations, not grpc-core's). The collector runs in this process (TLS, SQLite)
with tracemalloc on; ``--agents`` streams are opened by one worker process of
``bench_channels.py`` (the real handshake, one TCP connection each) and held idle. Printed:
the Python bytes per stream in all, and the ``--top`` allocation sites (file:line, grouped
by the innermost frame of our code when ``--ours``) that grew, per stream.

    .venv/bin/python benchmarks/diag_channel_memory.py --agents 500
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_channels import KEY_LABEL, _free_port
from simagent import enroll

from collector.server import CollectorServer, ServerConfig


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="diag-channel-"))
    addr = f"127.0.0.1:{_free_port()}"
    server = CollectorServer(ServerConfig(address=addr, data_dir=tmp / "data"))
    await server.start()
    agents = enroll(server.store, args.agents, KEY_LABEL, "sim")
    job = tmp / "worker.json"
    job.write_text(json.dumps(agents))
    ready = Path(str(job) + ".ready")
    await asyncio.sleep(1.0)
    gc.collect()
    before = tracemalloc.take_snapshot()
    worker = subprocess.Popen([sys.executable, str(Path(__file__).with_name("bench_channels.py")), "--worker", str(job),
                               "--addr", addr, "--per-connection", "1"])
    try:
        while not ready.exists():
            if worker.poll() is not None:
                raise SystemExit("worker died")
            await asyncio.sleep(0.2)
        await asyncio.sleep(3.0)
        gc.collect()
        after = tracemalloc.take_snapshot()
        n = json.loads(ready.read_text())["held"]  # the worker's counts, JSON
        key = "traceback" if args.ours else "lineno"
        stats = after.compare_to(before, key)
        total = sum(s.size_diff for s in stats)
        print(f"{n} streams; Python allocations grew {total / 1024:.0f} KiB = {total / n:.0f} bytes per stream")
        if args.ours:
            grouped: dict[str, int] = {}
            for s in stats:
                frames = [f for f in s.traceback if not any(x in f.filename for x in ("/site-packages/", "/python3."))]
                site = f"{frames[0].filename.rsplit('/', 2)[-2:]}:{frames[0].lineno}" if frames else "(library only)"
                grouped[site] = grouped.get(site, 0) + s.size_diff
            for site, size in sorted(grouped.items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"{size / n:8.0f} B/stream  {site}")
        else:
            for s in stats[: args.top]:
                f = s.traceback[0]
                where = "/".join(f.filename.rsplit("/", 3)[-3:])
                print(f"{s.size_diff / n:8.0f} B/stream {s.count_diff / n:6.2f} blocks  {where}:{f.lineno}")
    finally:
        worker.terminate()
        worker.wait(30)
        await server.stop(0.5)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--ours", action="store_true", help="group by the innermost frame of Casefile's code")
    ap.add_argument("--frames", type=int, default=12)
    a = ap.parse_args()
    tracemalloc.start(a.frames if a.ours else 1)
    asyncio.run(main(a))
