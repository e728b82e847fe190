"""Query latency while decompression bombs are uploaded, against idle, same run.

A real collector (``casefile-collector serve``: TLS on loopback, SQLite + the blob
folder) with ``--agents`` agents enrolled with real keys. Each agent's bomb is a real
bundle it signed with one more member, not in the manifest, of zeros written as zstd
RLE blocks (4 bytes per 128 KiB):

* ``7gib``: 7 GiB of zeros in about 240 KB, the upload that once held the collector;
* ``at-bound``: incompressible padding to raise the collector's decompression bound
  (1000 x the compressed size), then zeros just under it: the most work a bomb can buy.

Each run calls ``ListHosts`` back to back for ``--seconds`` with nothing else going on,
then for ``--seconds`` while every agent uploads its bomb in a loop (refused, sent
again). Reported: ListHosts p50 and p99 of each phase, median and spread over the runs,
and the ratio of p99 during the bombs to p99 idle (goal ≤ 2x). A call that takes
longer than 10 s counts as 10 s and as a timeout.

    .venv/bin/python benchmarks/bench_bombs.py --runs 5 --seconds 10 --shape at-bound
    .venv/bin/python benchmarks/bench_bombs.py --code-root /path/to/old/checkout  # the collector of another tree
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import zstandard

from agent.bundle import BundleMeta, BundleWriter, new_bundle_id
from agent.keys import SigningKey
from agent.transport import enroll, open_channel, parse_address
from agent.transport.proof import make_proof
from protos import collector_pb2, collector_pb2_grpc, facts_pb2

BIN = Path(sys.executable).parent
CHUNK = 256 * 1024
CALL_TIMEOUT_S = 10.0
_RLE_BLOCK = 128 << 10


# ---------------------------------------------------------------- bombs


def _zstd_block(kind: int, size: int, body: bytes, last: bool = False) -> bytes:
    return ((size << 3) | (kind << 1) | int(last)).to_bytes(3, "little") + body


def _bomb(bundle: bytes, zeros: int, padding: bytes) -> bytes:
    """``bundle`` with unlisted members (padding, then zeros) before MANIFEST.json, as one zstd frame."""
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(bundle)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        manifest = next(i for i in tar.getmembers() if i.name.endswith("/MANIFEST.json"))
    head, tail, top = raw[: manifest.offset], raw[manifest.offset :], manifest.name.split("/")[0]
    out = bytearray((0xFD2FB528).to_bytes(4, "little") + bytes([0x00, 0x50]))

    def raw_blocks(data: bytes) -> None:
        for i in range(0, len(data), _RLE_BLOCK):
            out.extend(_zstd_block(0, len(data[i : i + _RLE_BLOCK]), data[i : i + _RLE_BLOCK]))

    raw_blocks(head)
    if padding:
        info = tarfile.TarInfo(f"{top}/padding.bin")
        info.size, info.mode = len(padding), 0o600
        raw_blocks(info.tobuf(format=tarfile.PAX_FORMAT) + padding + b"\0" * (-len(padding) % 512))
    info = tarfile.TarInfo(f"{top}/bomb.bin")
    info.size, info.mode = zeros, 0o600
    raw_blocks(info.tobuf(format=tarfile.PAX_FORMAT))
    whole, rest = divmod(zeros, _RLE_BLOCK)
    out.extend(_zstd_block(1, _RLE_BLOCK, b"\0") * whole)
    if rest:
        out.extend(_zstd_block(1, rest, b"\0"))
    raw_blocks(tail[:-1])
    out.extend(_zstd_block(0, 1, tail[-1:], last=True))
    return bytes(out)


def _make_bomb(out: Path, key: SigningKey, agent_id: str, shape: str, ratio: int) -> tuple[bytes, str]:
    bid = new_bundle_id()
    snap = facts_pb2.Snapshot(bundle_id=bid, agent_id=agent_id, kind="one-shot")
    snap.host.hostname = "bomb-host"
    now = dt.datetime.now(dt.UTC)
    meta = BundleMeta(bundle_id=bid, hostname="bomb-host", agent_id=agent_id, agent_version="bench", created_at=now)
    out.mkdir(parents=True, exist_ok=True)
    with BundleWriter(out, key=key, meta=meta) as w:
        w.add_bytes("facts.pb", snap.SerializeToString())
        written = w.finish(spec={"bench": True})
    bundle = written.path.read_bytes()
    if shape == "7gib":
        return _bomb(bundle, 7 << 30, b""), bid
    padding = os.urandom(240_000)
    zeros = int(0.95 * ratio * len(padding)) // 512 * 512
    return _bomb(bundle, zeros, padding), bid


# ---------------------------------------------------------------- clients


def _channel(port: int, fingerprint: str) -> grpc.Channel:
    return open_channel(parse_address(f"127.0.0.1:{port}"), ca_fingerprint=fingerprint)


def _list_hosts(port: int, fingerprint: str, token: str, seconds: float, warm: bool) -> tuple[list[float], int]:
    md = (("authorization", f"Bearer {token}"),)
    latencies: list[float] = []
    timeouts = 0
    with _channel(port, fingerprint) as ch:
        stub = collector_pb2_grpc.QueryStub(ch)
        if warm:  # the connection and the first call, outside the figures
            stub.ListHosts(collector_pb2.ListHostsRequest(), metadata=md, timeout=30)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                stub.ListHosts(collector_pb2.ListHostsRequest(), metadata=md, timeout=CALL_TIMEOUT_S)
                latencies.append(time.perf_counter() - t0)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                latencies.append(CALL_TIMEOUT_S)
                timeouts += 1
    return latencies, timeouts


def _bomber(
    port: int, fingerprint: str, key: SigningKey, agent_id: str, bomb: bytes, bid: str, stop: threading.Event
) -> dict[str, int]:
    import hashlib

    sha = hashlib.sha256(bomb).hexdigest()
    codes: dict[str, int] = {}
    with _channel(port, fingerprint) as ch:
        stub = collector_pb2_grpc.IngestStub(ch)
        while not stop.is_set():
            proof = make_proof(key, agent_id=agent_id, bundle_id=bid, sha256=sha, size=len(bomb))
            header = collector_pb2.UploadHeader(bundle_id=bid, size=len(bomb), sha256=sha, proof=proof)
            chunks = [collector_pb2.UploadChunk(header=header)]
            chunks += [collector_pb2.UploadChunk(data=bomb[i : i + CHUNK]) for i in range(0, len(bomb), CHUNK)]
            try:
                stub.Upload(iter(chunks), timeout=120)
                name = "OK"
            except grpc.RpcError as err:
                name = err.code().name
            codes[name] = codes.get(name, 0) + 1
    return codes


def _collect(results: list[dict[str, int]], *args: Any) -> None:
    results.append(_bomber(*args))


# ---------------------------------------------------------------- the run


def _cli(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(
        [str(BIN / "casefile-collector"), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    ap.add_argument("--agents", type=int, default=8, help="bombs uploaded at once, one enrolled agent each")
    ap.add_argument("--shape", choices=("7gib", "at-bound"), default="at-bound")
    ap.add_argument("--ratio", type=int, default=1000, help="the collector's decompression ratio (for at-bound)")
    ap.add_argument("--code-root", type=Path, help="run the collector from this source tree (PYTHONPATH)")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.code_root:
        env["PYTHONPATH"] = str(args.code_root.resolve())

    with tempfile.TemporaryDirectory(prefix="bench-bombs-") as tmp_s:
        tmp = Path(tmp_s)
        data_dir = tmp / "collector"
        common = ["--data-dir", str(data_dir)]
        enroll_token = _cli("token", "create", "--kind", "enroll", "--uses", str(args.agents), "-q", *common, env=env)
        viewer = _cli("token", "create", "--kind", "engineer", "--role", "viewer", "-q", *common, env=env)
        ready = tmp / "collector.json"
        serve = [str(BIN / "casefile-collector"), "serve", "--address", "127.0.0.1:0", *common]
        proc = subprocess.Popen([*serve, "--ready-file", str(ready)], stderr=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the collector did not start")
                time.sleep(0.05)
            info: dict[str, Any] = json.loads(ready.read_text())
            port, fingerprint = int(info["port"]), str(info["fingerprint"])
            bombers = []
            with _channel(port, fingerprint) as ch:
                for i in range(args.agents):
                    key = SigningKey.generate()
                    agent_id = enroll(ch, token=enroll_token, key=key, hostname=f"h{i}", agent_version="b").agent_id
                    bomb, bid = _make_bomb(tmp / f"b{i}", key, agent_id, args.shape, args.ratio)
                    bombers.append((key, agent_id, bomb, bid))
            size = statistics.mean(len(b[2]) for b in bombers)
            print(f"{args.agents} bombs of {size / 1000:.0f} KB ({args.shape})", file=sys.stderr)
            rows: list[tuple[float, float, float, float, int, dict[str, int]]] = []
            for run in range(args.runs):
                idle, _ = _list_hosts(port, fingerprint, viewer, args.seconds, warm=True)
                stop = threading.Event()
                results: list[dict[str, int]] = []
                threads = [
                    threading.Thread(target=_collect, args=(results, port, fingerprint, *b, stop), daemon=True)
                    for b in bombers
                ]
                for t in threads:
                    t.start()
                time.sleep(0.5)  # let the bombs arrive
                busy, timeouts = _list_hosts(port, fingerprint, viewer, args.seconds, warm=False)
                stop.set()
                for t in threads:
                    t.join(180)
                codes: dict[str, int] = {}
                for r in results:
                    for k, v in r.items():
                        codes[k] = codes.get(k, 0) + v
                row = (_pct(idle, 0.5), _pct(idle, 0.99), _pct(busy, 0.5), _pct(busy, 0.99), timeouts, codes)
                rows.append(row)
                print(
                    f"run {run + 1}: idle p50 {row[0] * 1e3:.1f} p99 {row[1] * 1e3:.1f} ms ({len(idle)} calls); "
                    f"bombs p50 {row[2] * 1e3:.1f} p99 {row[3] * 1e3:.1f} ms ({len(busy)} calls, {timeouts} "
                    f"timed out); uploads answered {codes}",
                    file=sys.stderr,
                )
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # still decompressing bombs (an old collector)
                proc.kill()
                proc.wait(30)

    def summary(i: int) -> str:
        vals = [r[i] * 1e3 for r in rows]
        return f"{statistics.median(vals):.1f} ms ({min(vals):.1f}-{max(vals):.1f})"

    ratios = [r[3] / r[1] for r in rows]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"| ListHosts p99 while {args.agents} bombs ({args.shape}, {size / 1000:.0f} KB each) are uploaded in a loop, "
        f"median of {args.runs} runs of {args.seconds:g} s | `benchmarks/bench_bombs.py --runs {args.runs} "
        f"--seconds {args.seconds:g} --shape {args.shape}` | p99 {summary(3)}, p50 {summary(2)} "
        f"| idle, same run: p99 {summary(1)}, p50 {summary(0)} | **{statistics.median(ratios):.2f}x** idle p99 "
        f"({min(ratios):.2f}-{max(ratios):.2f}; goal ≤ 2x) | {dt.date.today().isoformat()} | {commit} |"
    )


if __name__ == "__main__":
    main()
