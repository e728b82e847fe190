"""Ingest throughput (receive + hash + verify + store) vs a raw grpc.aio upload, same run.

Two servers, each its own process, both TLS on loopback with the same certificate:

* the real collector (``casefile-collector serve``, SQLite + the blob folder, or S3 with
  ``--blob-url``), which stages, hashes, fsyncs, verifies the signed bundle and commits;
* a trivial Ingest servicer (this script with ``--raw-server``) that only counts bytes.

One client code path drives both: a grpc.aio client stream of ``UploadChunk`` messages,
header first, then 256 KiB chunks of a real signed bundle whose payload is incompressible.
Rounds alternate raw / collector, each stream started once both servers are quiet (the
collector's analysis of the bundle before, which follows its receipt, done); each round
uses a fresh bundle (the collector is idempotent on bundle id). Reported: median MiB/s of
each and the ratio (goal ≥ 50 %), and the median and range of each round's collector/raw
ratio.

    .venv/bin/python benchmarks/bench_ingest.py --mib 128 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
from machine import machine_line

from agent.bundle import BundleMeta, BundleWriter, new_bundle_id
from agent.keys import SigningKey
from agent.transport import enroll, file_sha256, open_channel, parse_address
from agent.transport.connect import PINNED_TARGET_NAME
from agent.transport.proof import make_proof
from collector.tls import ensure_self_signed
from protos import collector_pb2, collector_pb2_grpc, facts_pb2

BIN = Path(sys.executable).parent
CHUNK = 256 * 1024


# ---------------------------------------------------------------- raw servicer


class _CountingIngest(collector_pb2_grpc.IngestServicer):
    async def Upload(self, request_iterator: Any, context: Any) -> collector_pb2.Receipt:
        n = 0
        header = None
        async for msg in request_iterator:
            if header is None:
                header = msg.header
            else:
                n += len(msg.data)
        return collector_pb2.Receipt(bundle_id=header.bundle_id if header else "", size=n)


async def _raw_server(tls_dir: Path, ready: Path) -> None:
    tls = ensure_self_signed(tls_dir)
    # The same receive limit as the collector, so message handling is comparable.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 2 * 1024 * 1024)])
    collector_pb2_grpc.add_IngestServicer_to_server(_CountingIngest(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)]))
    await server.start()
    ready.write_text(json.dumps({"port": port}))
    await server.wait_for_termination()


# ---------------------------------------------------------------- client


def _make_bundle(out: Path, key: SigningKey, agent_id: str, payload: Path) -> tuple[Path, str]:
    bid = new_bundle_id()
    snap = facts_pb2.Snapshot(bundle_id=bid, agent_id=agent_id, kind="one-shot")
    snap.host.hostname = "bench-host"
    meta = BundleMeta(
        bundle_id=bid,
        hostname="bench-host",
        case_id=None,
        kind="one-shot",
        agent_id=agent_id,
        agent_version="bench",
        created_at=dt.datetime.now(dt.UTC),
        request_id=None,
    )
    out.mkdir(parents=True, exist_ok=True)
    with BundleWriter(out, key=key, meta=meta) as w:
        w.add_bytes("facts.pb", snap.SerializeToString())
        w.add_file("logs/payload.bin", payload)
        written = w.finish(spec={"bench": True}, collectors=[], truncated=[], redaction=None)
    return written.path, bid


async def _stream(port: int, cert_pem: bytes, header: collector_pb2.UploadHeader, path: Path) -> float:
    creds = grpc.ssl_channel_credentials(root_certificates=cert_pem)
    opts = [("grpc.ssl_target_name_override", PINNED_TARGET_NAME)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=opts) as ch:
        await ch.channel_ready()
        stub = collector_pb2_grpc.IngestStub(ch)

        async def chunks() -> Any:
            yield collector_pb2.UploadChunk(header=header)
            with path.open("rb") as fh:
                while data := fh.read(CHUNK):
                    yield collector_pb2.UploadChunk(data=data)

        t0 = time.perf_counter()
        await stub.Upload(chunks(), timeout=600)
        return time.perf_counter() - t0


def _settle(pids: list[int], *, quiet_cpu_s: float = 0.01, window_s: float = 0.25, timeout_s: float = 30) -> bool:
    """Wait until these processes and their children are quiet (under ``quiet_cpu_s`` of
    CPU in a ``window_s`` window), so that a stream is not timed against the collector's
    work on the bundle before (its analysis, at ingest, runs after the receipt); False if
    they were still busy after ``timeout_s``."""
    start = time.monotonic()

    def used() -> float:
        total = 0.0
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                for p in [proc, *proc.children(recursive=True)]:
                    t = p.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                continue
        return total

    before = used()
    while time.monotonic() - start < timeout_s:
        time.sleep(window_s)
        now = used()
        if now - before < quiet_cpu_s:
            return True
        before = now
    return False


def _wait_file(path: Path, proc: subprocess.Popen[bytes], what: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists():
            loaded: dict[str, Any] = json.loads(path.read_text())
            return loaded
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=128, help="payload size of each bundle (MiB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blob-url", default=None, help="s3://bucket/prefix for the collector (env gives endpoint)")
    ap.add_argument("--raw-server", nargs=2, metavar=("TLS_DIR", "READY_FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_server:
        asyncio.run(_raw_server(Path(args.raw_server[0]), Path(args.raw_server[1])))
        return

    print(machine_line(), flush=True)  # before anything starts: the figures scale with it
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_s:
        tmp = Path(tmp_s)
        data_dir = tmp / "collector"
        tls = ensure_self_signed(data_dir / "tls")
        token = subprocess.run(
            [str(BIN / "casefile-collector"), "token", "create", "--kind", "enroll", "-q", "--data-dir", str(data_dir)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        serve = [str(BIN / "casefile-collector"), "serve", "--address", "127.0.0.1:0", "--data-dir", str(data_dir)]
        serve += ["--ready-file", str(tmp / "collector.json"), "--max-bundle-mib", str(args.mib * 2 + 64)]
        if args.blob_url:
            serve += ["--blob-url", args.blob_url]
        procs = [
            subprocess.Popen(serve, stderr=subprocess.DEVNULL),
            subprocess.Popen(
                [sys.executable, __file__, "--raw-server", str(data_dir / "tls"), str(tmp / "raw.json")],
                stderr=subprocess.DEVNULL,
            ),
        ]
        try:
            cport = int(_wait_file(tmp / "collector.json", procs[0], "collector")["port"])
            rport = int(_wait_file(tmp / "raw.json", procs[1], "raw server")["port"])
            key = SigningKey.generate()
            with open_channel(parse_address(f"127.0.0.1:{cport}"), ca_fingerprint=tls.fingerprint) as ch:
                agent_id = enroll(ch, token=token, key=key, hostname="bench-host", agent_version="bench").agent_id
            payload = tmp / "payload.bin"
            with payload.open("wb") as fh:
                for _ in range(args.mib):
                    fh.write(os.urandom(1024 * 1024))
            raw_rates: list[float] = []
            col_rates: list[float] = []
            size = 0
            for i in range(args.rounds):
                path, bid = _make_bundle(tmp / f"b{i}", key, agent_id, payload)
                size, sha = path.stat().st_size, file_sha256(path)
                header = collector_pb2.UploadHeader(
                    bundle_id=bid,
                    size=size,
                    sha256=sha,
                    file_name=path.name,
                    proof=make_proof(key, agent_id=agent_id, bundle_id=bid, sha256=sha, size=size),
                )
                mib = size / 2**20
                quiet = [p.pid for p in procs]
                for port, into in ((rport, raw_rates), (cport, col_rates)):
                    if not _settle(quiet):
                        print("warning: the servers were still busy after 30 s; timing anyway", file=sys.stderr)
                    into.append(mib / asyncio.run(_stream(port, tls.cert_pem, header, path)))
                path.unlink()
                rates = f"raw {raw_rates[-1]:.0f} MiB/s, collector {col_rates[-1]:.0f} MiB/s"
                print(f"round {i + 1}: {rates}", file=sys.stderr)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
    raw, col = statistics.median(raw_rates), statistics.median(col_rates)
    # Each round's collector upload against the raw one just before it, in the same conditions.
    paired = sorted(c / r for c, r in zip(col_rates, raw_rates, strict=True))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    where = "S3 " + args.blob_url if args.blob_url else "SQLite + blob folder"
    print(
        f"| ingest throughput, {size / 2**20:.0f} MiB bundle, 256 KiB chunks, TLS loopback ({where}), "
        f"median of {args.rounds} | `benchmarks/bench_ingest.py --mib {args.mib} --rounds {args.rounds}` "
        f"| {col:.0f} MiB/s | raw grpc.aio client-stream to a byte-counting servicer: {raw:.0f} MiB/s "
        f"| {col / raw:.0%} of raw (goal ≥ 50 %); round by round {statistics.median(paired):.0%} "
        f"({paired[0]:.0%}-{paired[-1]:.0%}) | {dt.date.today().isoformat()} | {commit} |"
    )


if __name__ == "__main__":
    main()
