"""Fleet questions at scale: ListFindings and QueryMetrics through the Query API vs the same SQL directly.

Fills a fresh database (SQLite file, or a fresh PostgreSQL database) with ``--bundles``
bundles' worth of stored analysis over one year, written directly with SQLAlchemy Core
(as ``bench_query.py`` does for bundles): one ``bundle_metrics`` row per bundle, two
``fs_metrics`` rows (``/`` and ``/var``) and 0-3 ``finding_rows`` per bundle (about 1.2
per bundle on average), 1,000 hosts with a Zipf-like skew and 20 % of bundles in cases.
SQLite's planner statistics are what a running collector would have: it analyzes these
tables at open and as rows arrive (``collector/storage/stats.py``); on PostgreSQL an
``ANALYZE`` after the fill stands in for autovacuum. Metric values are drawn so that rare
conditions are rare (memory above 90 % in ~5 % of bundles, ``/var`` bytes fragmented
above 30 % in ~8 %, clock offset above 500 ms in ~1 %).

It then starts a real collector process on it (TLS, loopback) and times, each call
authenticated and audited: ListFindings pages (100 rows) for the shapes an engineer uses
and QueryMetrics (limit 100) for a few filters. Baseline in the same run: the same store
method (``Store.list_findings``, ``Store.run_metric_query``) in this process.

    .venv/bin/python benchmarks/bench_findings.py --bundles 1000000 --db sqlite
    .venv/bin/python benchmarks/bench_findings.py --bundles 1000000 --db postgres
    .venv/bin/python benchmarks/bench_findings.py --bundles 1000000 --db-url sqlite:////tmp/findings-1m.db
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
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import create_engine, make_url, text

from agent.transport import open_channel, parse_address
from collector.query_lang import compile_query
from collector.storage import Store
from collector.storage.findings import bundle_metrics, finding_rows, fs_metrics
from protos import collector_pb2, collector_pb2_grpc

BIN = Path(sys.executable).parent
HOSTS, CASES, BATCH, PAGE = 1000, 5000, 20_000, 100
DAY_US = 86_400 * 10**6
SPAN_US = 365 * DAY_US
NOW = dt.datetime.now(dt.UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)
RULES = [("fragmentation-heavy", "warning", 2), ("disk-full", "critical", 3), ("memory-pressure", "warning", 2),
         ("clock-skew", "warning", 2), ("tcp-retransmissions", "warning", 2), ("recent-reboot", "info", 1)]


def _fill(store: Store, n: int) -> None:
    rng = random.Random(1)
    hosts = rng.choices(range(HOSTS), weights=[1 / (r + 1) ** 0.9 for r in range(HOSTS)], k=n)
    step = SPAN_US // n
    t0 = time.perf_counter()
    rows = 0
    with store.engine.begin() as conn:
        for start in range(0, n, BATCH):
            m, fs, fr = [], [], []
            for i in range(start, min(n, start + BATCH)):
                bid, h = f"{i:032x}", hosts[i]
                at = NOW_US - SPAN_US + i * step
                where = {"hostname": f"host-{h:04d}", "case_id": f"SR-{rng.randrange(CASES)}" if rng.random() < 0.2
                         else None, "agent_id": f"ag_{h:04d}", "created_at": at}
                mem = 95.0 if rng.random() < 0.05 else rng.uniform(10, 85)
                offset = rng.choice((-1, 1)) * (800.0 if rng.random() < 0.01 else rng.uniform(0, 40))
                m.append({"bundle_id": bid, **where, "cpu_percent": rng.uniform(0, 100), "memory_percent": mem,
                          "swap_percent": rng.uniform(0, 20), "load1": rng.uniform(0, 8), "load5": rng.uniform(0, 8),
                          "load15": rng.uniform(0, 8), "tcp_retrans_pct": rng.uniform(0, 3),
                          "clock_ntp_offset_ms": offset, "clock_collector_offset_ms": rng.uniform(-50, 50)})
                var_frag = rng.uniform(31, 80) if rng.random() < 0.08 else rng.uniform(0, 25)
                for mount, frag in (("/", rng.uniform(0, 20)), ("/var", var_frag)):
                    fs.append({"bundle_id": bid, "created_at": at, "mountpoint": mount, "fstype": "ext4",
                               "use_pct": rng.uniform(5, 99), "fragmented_files_pct": frag / 2,
                               "fragmented_bytes_pct": frag, "fragments_p95": 2.0})
                for _ in range(rng.choice((0, 0, 1, 1, 1, 2, 3))):
                    rule, sev, rank = rng.choice(RULES)
                    fr.append({"bundle_id": bid, **where, "rule": rule, "severity": sev, "rank": rank,
                               "title": f"{rule} on host-{h:04d}", "subject": "/var", "numbers_json": "{}",
                               "evidence_json": "[]"})
            conn.execute(bundle_metrics.insert(), m)
            conn.execute(fs_metrics.insert(), fs)
            if fr:
                conn.execute(finding_rows.insert(), fr)
            rows += len(m) + len(fs) + len(fr)
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as conn:  # what autovacuum would have done (off on the CI server)
            c = conn.execution_options(isolation_level="AUTOCOMMIT")
            for t in ("bundle_metrics", "fs_metrics", "finding_rows"):
                c.execute(text(f"VACUUM (ANALYZE) {t}"))
            # A store fills over weeks, not in minutes: without this the checkpoint writing out
            # the fill ran under the first shapes timed, and each call's audit commit waited on it.
            c.execute(text("CHECKPOINT"))
    print(f"inserted {rows:,} rows for {n:,} bundles in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def _ts(value: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


WEEK = NOW - dt.timedelta(days=7)
FINDING_SHAPES: dict[str, dict[str, Any]] = {
    "newest": {},
    "rule": {"rules": ["fragmentation-heavy"]},
    "critical only": {"min_severity": "critical"},
    "rule + warning + 7 days": {"rules": ["clock-skew"], "min_severity": "warning", "since": WEEK},
    "busiest host": {"hostname": "host-0000"},
    "quiet host, rule": {"hostname": "host-0999", "rules": ["disk-full"]},
    "case": {"case_id": "SR-2500"},
    "text": {"text": "host-0007"},
}
QUERIES = [
    "memory.percent > 90 since 7d",
    "fs.fragmented_bytes_pct > 30 and memory.percent > 90 since 7d",
    "fs.fragmented_bytes_pct > 30 and memory.percent > 90",
    "fs.mount = '/var' and fs.fragmented_bytes_pct > 30",
    "clock.abs_offset_ms > 500 since 30d",
    "host = 'host-0003' and load.1 > 4",
]


def _direct_findings(kw: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in kw.items() if k not in ("min_severity", "since")}
    if "min_severity" in kw:
        out["min_rank"] = {"info": 1, "warning": 2, "critical": 3}[kw["min_severity"]]
    if "since" in kw:
        out["since_us"] = int(kw["since"].timestamp() * 1_000_000)
    return out


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def _p50_p95(samples: list[float]) -> tuple[float, float]:
    return _pct(samples, 0.5), _pct(samples, 0.95)


def _time(fn: Callable[[], Any], reps: int) -> list[float]:
    for _ in range(3):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _filled(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM bundle_metrics")).scalar_one())


def run(url: str, n: int, reps: int, tmp: Path) -> dict[str, tuple[float, float, float, float, int]]:
    store = Store.open(url)
    have = _filled(store)
    if have == 0:
        _fill(store, n)
    elif have != n:
        raise SystemExit(f"the database holds {have:,} bundles, not {n:,}")
    else:
        print(f"reusing the {have:,} bundles already in the database", file=sys.stderr)
    token, _ = store.create_token("engineer", role="viewer", label="bench", ttl=dt.timedelta(hours=2))
    ready = tmp / "ready.json"
    proc = subprocess.Popen(
        [str(BIN / "casefile-collector"), "serve", "--address", "127.0.0.1:0", "--data-dir", str(tmp / "collector"),
         "--db-url", url, "--ready-file", str(ready)],
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, tuple[float, float, float, float, int]] = {}
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("collector did not start")
            time.sleep(0.05)
        # Reopen so the direct baseline plans with the statistics the collector just took
        # at its start, as its own connections do.
        store.close()
        store = Store.open(url)
        info = json.loads(ready.read_text())
        md = (("authorization", f"Bearer {token}"),)
        with open_channel(parse_address(info["address"]), ca_fingerprint=info["fingerprint"]) as ch:
            stub = collector_pb2_grpc.QueryStub(ch)
            for name, kw in FINDING_SHAPES.items():
                fields: dict[str, Any] = {k: (_ts(v) if k == "since" else v) for k, v in kw.items()}
                freq = collector_pb2.ListFindingsRequest(page_size=PAGE, **fields)

                def api_call(r: collector_pb2.ListFindingsRequest = freq) -> Any:
                    return stub.ListFindings(r, metadata=md, timeout=60)

                def direct_call(kw: dict[str, Any] = kw) -> Any:
                    return store.list_findings(page_size=PAGE, **_direct_findings(kw))

                api, direct = _time(api_call, reps), _time(direct_call, reps)
                got = len(api_call().findings)
                results[f"ListFindings {name}"] = (*_p50_p95(api), *_p50_p95(direct), got)
            for q in QUERIES:
                mreq = collector_pb2.QueryMetricsRequest(query=q, limit=PAGE)

                def api_query(r: collector_pb2.QueryMetricsRequest = mreq) -> Any:
                    return stub.QueryMetrics(r, metadata=md, timeout=60)

                def direct_query(q: str = q) -> Any:
                    return store.run_metric_query(compile_query(q, now=dt.datetime.now(dt.UTC)).statement)

                api, direct = _time(api_query, reps), _time(direct_query, reps)
                got = len(api_query().rows)
                results[f"query {q!r}"] = (*_p50_p95(api), *_p50_p95(direct), got)
            for name, r in results.items():
                print(f"{name} ({r[4]} rows): api p50/p95 {r[0]:.2f}/{r[1]:.2f} ms, direct {r[2]:.2f}/{r[3]:.2f} ms",
                      file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(30)
        store.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument(
        "--db-url",
        help="use this database (sqlite:////path or postgresql+psycopg://...) instead of a fresh one, filling it "
        "when empty and reusing it when it holds --bundles bundles: a before/after pair then measures the same "
        "rows (the fill takes minutes); it is kept",
    )
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-findings-") as tmp_s:
        tmp = Path(tmp_s)
        if args.db_url:
            results = run(args.db_url, args.bundles, args.reps, tmp)
        elif args.db == "sqlite":
            results = run(f"sqlite:///{tmp / 'bench.db'}", args.bundles, args.reps, tmp)
        else:
            admin_url = make_url(args.pg_url)
            name = f"casefile_bench_{secrets.token_hex(4)}"
            admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                results = run(admin_url.set(database=name).render_as_string(hide_password=False), args.bundles,
                              args.reps, tmp)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    worst = max(results.items(), key=lambda kv: kv[1][1])
    shapes = "; ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}" for k, v in results.items())
    base = "; ".join(f"{v[2]:.1f}/{v[3]:.1f}" for v in results.values())
    print(
        f"| ListFindings and QueryMetrics through the Query API over {args.bundles:,} bundles' stored analysis "
        f"({args.db}), {args.reps} calls per shape (goal p95 ≤ 50 ms) "
        f"| `.venv/bin/python benchmarks/bench_findings.py --bundles {args.bundles} --db {args.db}` "
        f"| p50/p95 ms — {shapes} | the same store method directly, p50/p95 ms in the same order: {base} "
        f"| worst p95 {worst[1][1]:.1f} ms ({worst[0]}) | {dt.date.today().isoformat()} | {commit} |"
    )


if __name__ == "__main__":
    main()
