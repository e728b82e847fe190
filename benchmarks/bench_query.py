"""Bundle list/filter at scale: ListBundles through the Query API vs the same SQL directly.

Fills a fresh database (SQLite file, or a fresh PostgreSQL database) with ``--rows``
synthetic bundles over one year, shaped like a fleet rather than a grid: 1,000 hosts
(one agent each) whose scheduled bundles follow a Zipf-like skew (the busiest host has
~8 % of them), and 20 % of bundles in 5,000 cases of ~40 bundles each, on 1-3 hosts
within three days. Rows go in by SQLAlchemy Core executemany, 10k per batch.

It then starts a real collector process on it (TLS, loopback) and times ListBundles
pages (50 rows) for the shapes an engineer uses: first page; the busiest host; a case;
the busiest host over one week; a deep cursor page (90 % down); the same on the busiest
host; and the busiest agent within a case it has no bundles in (the shape that walks the
agent's index without planner statistics). Every call is authenticated and audited.
Baseline in the same run: ``Store.list_bundles`` with the same arguments, in this
process (no gRPC, no auth, no audit).

Planner statistics are what a running collector would have, no more. SQLite: none from
this script; the collector analyzes at open and as bundles arrive
(``collector/storage/stats.py``), so the one started here analyzes at startup.
PostgreSQL: ``ANALYZE bundles`` after the fill stands in for autovacuum, which any real
server runs but this CI's PostgreSQL has switched off (``conf.d/90-ci.conf``).

    .venv/bin/python benchmarks/bench_query.py --rows 1000000 --db sqlite
    .venv/bin/python benchmarks/bench_query.py --rows 1000000 --db postgres \\
        --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import create_engine, make_url, text

from agent.keys import SigningKey
from agent.transport import open_channel, parse_address
from collector.storage import Store
from collector.storage.cursors import encode_bundle_cursor
from collector.storage.schema import bundles
from protos import collector_pb2, collector_pb2_grpc

BIN = Path(sys.executable).parent
HOSTS, CASES, BATCH, PAGE, IDLE_AGENTS = 1000, 5000, 10_000, 50, 100
CASE_SHARE, CASE_DAYS, SKEW = 0.2, 3, 0.9
BASE_US = 1_700_000_000_000_000
DAY_US = 86_400 * 10**6
SPAN_US = 365 * DAY_US


@dataclass(frozen=True)
class Fleet:
    """What the shapes need to know about the filled data."""

    rows: int
    agents: list[str]
    cases: list[tuple[int, list[int]]]  # (start offset in µs, host numbers) per case


def _fill(store: Store, rows: int) -> Fleet:
    rng = random.Random(1)
    agents = []
    for h in range(HOSTS):
        pub = SigningKey.generate().public
        agents.append(store.create_agent(pub.raw, pub.fingerprint, f"host-{h:04d}", None).id)
    cases = [
        (rng.randrange(SPAN_US - CASE_DAYS * DAY_US), rng.sample(range(HOSTS), rng.randint(1, 3)))
        for _ in range(CASES)
    ]
    # Host 0 is the busiest, host 999 the quietest; drawn once for all rows (fast).
    scheduled_host = rng.choices(range(HOSTS), weights=[1 / (r + 1) ** SKEW for r in range(HOSTS)], k=rows)
    step = SPAN_US // rows
    t0 = time.perf_counter()
    with store.engine.begin() as conn:
        for start in range(0, rows, BATCH):
            batch = []
            for i in range(start, min(rows, start + BATCH)):
                if rng.random() < CASE_SHARE:
                    c = rng.randrange(CASES)
                    offset, hosts = cases[c]
                    h, case_id, kind = rng.choice(hosts), f"SR-{c}", "one-shot"
                    at = BASE_US + offset + rng.randrange(CASE_DAYS * DAY_US)
                else:
                    h, case_id, kind, at = scheduled_host[i], None, "scheduled", BASE_US + i * step
                batch.append(
                    {
                        "bundle_id": f"{i:032x}",
                        "agent_id": agents[h],
                        "hostname": f"host-{h:04d}",
                        "case_id": case_id,
                        "kind": kind,
                        "created_at": at,
                        "received_at": at + 500,
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
        # What autovacuum would have done by now (it is off on the CI server).
        with store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE bundles"))
    for w in range(IDLE_AGENTS):  # enrolled, no bundle yet: what ListHosts lists after the hosts
        pub = SigningKey.generate().public
        store.create_agent(pub.raw, pub.fingerprint, f"idle-{w:03d}", None)
    print(f"inserted {rows} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return Fleet(rows, agents, cases)


def _shapes(fleet: Fleet) -> dict[str, dict[str, Any]]:
    # A scheduled row 90 % of the way down (newest first); its slot is only approximately
    # that, since case bundles sit at their case's time, which is close enough.
    deep = int(fleet.rows * 0.1)
    cursor = encode_bundle_cursor(BASE_US + deep * (SPAN_US // fleet.rows), f"{deep:032x}")
    mid = dt.datetime.fromtimestamp((BASE_US + SPAN_US // 2) / 1e6, dt.UTC)
    case = CASES // 2
    elsewhere = next(c for c in range(CASES) if 0 not in fleet.cases[c][1])
    return {
        "first page": {},
        "busiest host": {"hostname": "host-0000"},
        "case": {"case_id": f"SR-{case}"},
        "busiest host, one week": {"hostname": "host-0000", "since": mid, "until": mid + dt.timedelta(days=7)},
        "deep page": {"cursor": cursor},
        "deep page, busiest host": {"hostname": "host-0000", "cursor": cursor},
        "busiest agent + case, no match": {"agent_id": fleet.agents[0], "case_id": f"SR-{elsewhere}"},
    }


def _timestamp(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


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
    fleet = _fill(store, rows)
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
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("collector did not start")
            time.sleep(0.05)
        # Reopen so the direct baseline plans with the statistics the collector just took,
        # as its own connections do (an open SQLite connection keeps the ones it loaded).
        store.close()
        store = Store.open(url)
        info = json.loads(ready.read_text())
        md = (("authorization", f"Bearer {token}"),)
        with open_channel(parse_address(info["address"]), ca_fingerprint=info["fingerprint"]) as ch:
            stub = collector_pb2_grpc.QueryStub(ch)
            for name, kw in _shapes(fleet).items():
                req = collector_pb2.ListBundlesRequest(
                    hostname=kw.get("hostname", ""),
                    case_id=kw.get("case_id", ""),
                    agent_id=kw.get("agent_id", ""),
                    since=_timestamp(kw.get("since")),
                    until=_timestamp(kw.get("until")),
                    page_size=PAGE,
                    page_token=kw.get("cursor", ""),
                )
                api = _time(lambda req=req: stub.ListBundles(req, metadata=md, timeout=30), reps)
                direct = _time(lambda kw=kw: store.list_bundles(page_size=PAGE, **kw), reps)
                results[name] = (_pct(api, 0.5), _pct(api, 0.95), _pct(direct, 0.5), _pct(direct, 0.95))
                got = len(stub.ListBundles(req, metadata=md, timeout=30).bundles)
                print(f"{name} ({got} rows): api p50/p95 {results[name][0]:.2f}/{results[name][1]:.2f} ms, "
                      f"direct {results[name][2]:.2f}/{results[name][3]:.2f} ms", file=sys.stderr)
            # ListHosts' first page also lists the agents without bundles (NOT EXISTS over
            # the agent index of bundles); the baseline is the host page alone, as before.
            hosts_req = collector_pb2.ListHostsRequest(page_size=100)
            api = _time(lambda: stub.ListHosts(hosts_req, metadata=md, timeout=30), reps)
            direct = _time(lambda: store.list_hosts(page_size=100), reps)
            results["hosts, first page"] = (_pct(api, 0.5), _pct(api, 0.95), _pct(direct, 0.5), _pct(direct, 0.95))
            waiting = len(stub.ListHosts(hosts_req, metadata=md, timeout=30).agents_without_bundles)
            print(f"hosts, first page (+{waiting} agents without bundles): api p50/p95 "
                  f"{results['hosts, first page'][0]:.2f}/{results['hosts, first page'][1]:.2f} ms, direct "
                  f"{results['hosts, first page'][2]:.2f}/{results['hosts, first page'][3]:.2f} ms", file=sys.stderr)
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
        f"| ListBundles through the Query API at {args.rows:,} bundles ({args.db}), page {PAGE}, "
        f"{args.reps} calls per shape (goal p95 ≤ 50 ms) "
        f"| `.venv/bin/python benchmarks/bench_query.py --rows {args.rows} --db {args.db}` "
        f"| p50/p95 ms — {shapes} | `Store.list_bundles` directly: {base} "
        f"| worst p95 {worst[1][1]:.1f} ms ({worst[0]}); {worst[1][1] / max(worst[1][3], 1e-6):.1f}x direct "
        f"| {dt.date.today().isoformat()} | {commit} |"
    )


if __name__ == "__main__":
    main()
