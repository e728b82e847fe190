"""Bundle list/filter at scale: ListBundles through the Query API vs the same SQL directly.

Fills a fresh database (SQLite file, or a fresh PostgreSQL database) with ``--rows``
synthetic bundles — 1,000 hosts, 5,000 cases, time-ordered — by SQLAlchemy Core
executemany in 10k batches inside transactions, starts a real collector process on it
(TLS, loopback), and times ListBundles pages (50 rows) for four shapes: first page,
first page filtered by host, a deep cursor page (90 % down), and a deep page filtered by
host and case. Baseline in the same run: ``Store.list_bundles`` with the same arguments,
in this process (no gRPC, no auth, no audit).

    .venv/bin/python benchmarks/bench_query.py --rows 1000000 --db sqlite
    .venv/bin/python benchmarks/bench_query.py --rows 1000000 --db postgres \\
        --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

from agent.keys import SigningKey
from agent.transport import open_channel, parse_address
from collector.storage import Store
from collector.storage.cursors import encode_bundle_cursor
from collector.storage.schema import bundles
from protos import collector_pb2, collector_pb2_grpc

BIN = Path(sys.executable).parent
HOSTS, CASES, BATCH, PAGE = 1000, 5000, 10_000, 50
BASE_US = 1_700_000_000_000_000


def _fill(store: Store, rows: int) -> None:
    agents = []
    for h in range(HOSTS):
        key = SigningKey.generate()
        pub = key.public
        agents.append(store.create_agent(pub.raw, pub.fingerprint, f"host-{h:04d}", None).id)
    t0 = time.perf_counter()
    with store.engine.begin() as conn:
        for start in range(0, rows, BATCH):
            batch = []
            for i in range(start, min(rows, start + BATCH)):
                batch.append(
                    {
                        "bundle_id": f"{i:032x}",
                        "agent_id": agents[i % HOSTS],
                        "hostname": f"host-{i % HOSTS:04d}",
                        "case_id": f"SR-{i % CASES}",
                        "kind": "one-shot",
                        "created_at": BASE_US + i * 1000,
                        "received_at": BASE_US + i * 1000 + 500,
                        "size": 1_000_000 + i % 1000,
                        "sha256": f"{i:064x}",
                        "key_fingerprint": "sha256:" + "0" * 64,
                        "agent_version": "bench",
                        "file_name": f"casefile-{i:032x}.tar.zst",
                        "collectors_ok": 9,
                        "collectors_failed": 0,
                        "blob_key": f"{i:064x}",
                        "os": "Debian 12",
                        "manifest_json": "{}",
                        "facts_pb": b"",
                    }
                )
            conn.execute(bundles.insert(), batch)
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE bundles"))
    print(f"inserted {rows} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def _shapes(rows: int) -> dict[str, dict[str, Any]]:
    deep = int(rows * 0.1)  # newest first: 90 % of the way down
    cursor = encode_bundle_cursor(BASE_US + deep * 1000, f"{deep:032x}")
    # A host/case pair that exists deep down: rows i ≡ h (mod HOSTS) and i ≡ c (mod CASES).
    h = deep % HOSTS
    return {
        "first page": {},
        "first page, host": {"hostname": "host-0007"},
        "deep page": {"cursor": cursor},
        "deep page, host+case": {"hostname": f"host-{h:04d}", "case_id": f"SR-{deep % CASES}", "cursor": cursor},
    }


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def _time(fn: Callable[[], Any], reps: int) -> list[float]:
    for _ in range(5):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(url: str, rows: int, reps: int, tmp: Path) -> dict[str, tuple[float, float, float, float]]:
    store = Store.open(url)
    _fill(store, rows)
    token, _ = store.create_token("engineer", role="viewer", label="bench", ttl=dt.timedelta(hours=2))
    data_dir = tmp / "collector"
    ready = tmp / "ready.json"
    proc = subprocess.Popen(
        [str(BIN / "casefile-collector"), "serve", "--address", "127.0.0.1:0", "--data-dir", str(data_dir),
         "--db-url", url, "--ready-file", str(ready)],
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, tuple[float, float, float, float]] = {}
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("collector did not start")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        md = (("authorization", f"Bearer {token}"),)
        with open_channel(parse_address(info["address"]), ca_fingerprint=info["fingerprint"]) as ch:
            stub = collector_pb2_grpc.QueryStub(ch)
            for name, kw in _shapes(rows).items():
                req = collector_pb2.ListBundlesRequest(
                    hostname=kw.get("hostname", ""),
                    case_id=kw.get("case_id", ""),
                    page_size=PAGE,
                    page_token=kw.get("cursor", ""),
                )
                api = _time(lambda req=req: stub.ListBundles(req, metadata=md, timeout=30), reps)
                direct = _time(lambda kw=kw: store.list_bundles(page_size=PAGE, **kw), reps)
                results[name] = (_pct(api, 0.5), _pct(api, 0.95), _pct(direct, 0.5), _pct(direct, 0.95))
                print(f"{name}: api p50/p95 {results[name][0]:.2f}/{results[name][1]:.2f} ms, direct "
                      f"{results[name][2]:.2f}/{results[name][3]:.2f} ms", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(30)
        store.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp_s:
        tmp = Path(tmp_s)
        if args.db == "sqlite":
            results = run(f"sqlite:///{tmp / 'bench.db'}", args.rows, args.reps, tmp)
        else:
            admin_url = make_url(args.pg_url)
            name = f"casefile_bench_{secrets.token_hex(4)}"
            admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                url = admin_url.set(database=name).render_as_string(hide_password=False)
                results = run(url, args.rows, args.reps, tmp)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    worst = max(results.items(), key=lambda kv: kv[1][1])
    shapes = "; ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}" for k, v in results.items())
    base = "; ".join(f"{k} {v[2]:.2f}/{v[3]:.2f}" for k, v in results.items())
    print(
        f"| ListBundles at {args.rows:,} bundles ({args.db}), page {PAGE}, p50/p95 ms over {args.reps} calls: "
        f"{shapes} | `benchmarks/bench_query.py --rows {args.rows} --db {args.db}` "
        f"| worst p95 {worst[1][1]:.1f} ms ({worst[0]}) | Store.list_bundles direct: {base} "
        f"| {worst[1][1] / max(worst[1][3], 1e-6):.1f}x direct; goal p95 ≤ 50 ms | {dt.date.today().isoformat()} "
        f"| {commit} |"
    )


if __name__ == "__main__":
    main()
