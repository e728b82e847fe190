"""The engineer console's server time: cases, hosts and bundle pages over many stored
bundles, and the log viewer over a 1,000,000-line bundle.

Fills a fresh SQLite database with ``--rows`` synthetic bundle rows the way
``bench_query.py`` does (1,000 hosts, Zipf-skewed; 20 % in 5,000 cases), starts a real
``casefile-collector serve --web-address`` process on it (TLS, loopback), enrolls an
agent and uploads two real signed bundles through Ingest: a small one and one of
``--lines`` log lines (``bench_analysis.million_lines``). A client in this process signs
in and times whole HTTPS requests on one keep-alive connection (the server's time plus
loopback), once the collector has stored its analysis of both uploads (it runs in the
collector's own process): p50/p95 over ``--reps`` calls per page, after one warm-up call each (the
first call of a bundle verifies the blob once and, for the log viewer, caches the
verified view). Every page runs the API's handlers: token check and audit rows included.

Baselines in the same run: ``Store.list_bundles`` of the 1,000 newest rows in this
process (what the cases page reads first, without HTTP, auth or audit), and one pass
that decompresses the big bundle and json-parses every log line (the floor of any scan).

    .venv/bin/python benchmarks/bench_console.py --rows 1000000 --lines 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import inspect, text

from agent.bundle.reader import verify_bundle
from agent.keys import SigningKey
from agent.transport import UploadTarget, enroll, open_channel, parse_address, upload_bundle
from benchmarks.bench_analysis import baseline, million_lines
from benchmarks.bench_query import _fill
from collector.storage import Store
from tests.fixtures.analysis.crafted import healthy_snapshot, write_bundle

BIN = Path(sys.executable).parent


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


class Client:
    def __init__(self, port: int, cafile: Path) -> None:
        self.conn = http.client.HTTPSConnection(
            "127.0.0.1", port, context=ssl.create_default_context(cafile=str(cafile)), timeout=300
        )
        self.cookie = ""

    def call(self, method: str, path: str, body: str | None = None) -> tuple[int, str]:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        for c in resp.headers.get_all("set-cookie") or []:
            self.cookie = c.split(";")[0]
        return resp.status, text

    def sign_in(self, token: str) -> None:
        _, page = self.call("GET", "/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf
        status, _ = self.call("POST", "/signin", urllib.parse.urlencode(
            {"csrf": csrf.group(1), "token": token, "next": "/cases"}))
        assert status == 303, status


def _complete(store: Store) -> None:
    """What ingest and analysis would have written for the filled bundles: the hosts table
    (1,000 hosts, each with its newest bundle), the case listing's rows (5,000 cases), an
    analysis row for every bundle and a stored finding for every tenth bundle
    (severity info, warning or critical in turn), so the hosts and cases pages read real rows."""
    t0 = time.perf_counter()
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO hosts (hostname, first_seen, last_seen, bundle_count, last_bundle_id, os) "
            "SELECT hostname, MIN(created_at), MAX(created_at), COUNT(*), '', 'Debian 12' "
            "FROM bundles GROUP BY hostname"
        ))
        conn.execute(text(
            "UPDATE hosts SET last_bundle_id = (SELECT b.bundle_id FROM bundles b WHERE b.hostname = hosts.hostname "
            "ORDER BY b.created_at DESC, b.bundle_id DESC LIMIT 1)"
        ))
        conn.execute(text(
            "INSERT INTO host_agents (hostname, agent_id) SELECT DISTINCT hostname, agent_id FROM bundles"
        ))
        if inspect(conn).has_table("case_activity"):  # (absent from a collector before the case listing)
            conn.execute(text(
                "INSERT INTO case_activity (case_id, last_created_at, bundle_count) "
                "SELECT case_id, MAX(created_at), COUNT(*) FROM bundles WHERE case_id IS NOT NULL GROUP BY case_id"
            ))
            conn.execute(text(
                "INSERT INTO case_hosts (case_id, hostname) "
                "SELECT DISTINCT case_id, hostname FROM bundles WHERE case_id IS NOT NULL"
            ))
        # Every filled bundle counts as analysed (as a running collector's would be): without a
        # row each, the collector's start-up sweep tries all 1,000,000 (no blob: each fails and
        # logs) for many minutes, on the CPU and GIL the pages are timed on.
        conn.execute(
            text(
                "INSERT INTO bundle_analysis (bundle_id, version, analysed_at, findings_json, timeline_json, "
                "report_html_z) SELECT bundle_id, 'bench', created_at, '{}', '{}', :empty FROM bundles"
            ),
            {"empty": zlib.compress(b"")},
        )
        conn.execute(text(
            "INSERT INTO finding_rows (bundle_id, hostname, case_id, agent_id, created_at, rule, severity, rank, "
            "title, subject, numbers_json, evidence_json) "
            "SELECT bundle_id, hostname, case_id, agent_id, created_at, 'disk-full', "
            "CASE rowid % 3 WHEN 0 THEN 'info' WHEN 1 THEN 'warning' ELSE 'critical' END, 1 + rowid % 3, "
            "'/var is nearly full', '/var:space', '{}', '[]' FROM bundles WHERE rowid % 10 = 0"
        ))
    print(f"hosts and findings written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def _timed(fn: Callable[[], object], reps: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--scan-reps", type=int, default=3, help="reps of the full-scan log filter")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "data"
        data.mkdir(mode=0o700)
        url = f"sqlite:///{data / 'casefile.db'}"
        with Store.open(url) as store:
            _fill(store, args.rows)
            _complete(store)
            token, _ = store.create_token("engineer", role="engineer", label="bench", ttl=dt.timedelta(hours=4))
            enroll_token, _ = store.create_token("enroll", label="bench", ttl=dt.timedelta(hours=1), max_uses=1)
            direct = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                store.list_bundles(page_size=1000)
                direct.append((time.perf_counter() - t0) * 1000)
        key = SigningKey.generate()
        t0 = time.perf_counter()
        big = write_bundle(tmp / "big", key, healthy_snapshot("big-host"), million_lines(args.lines))
        small = write_bundle(tmp / "small", key, healthy_snapshot("small-host"), None)
        print(f"wrote the {args.lines:,}-line bundle ({big.stat().st_size:,} bytes) in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        floor = [baseline(big) for _ in range(2)]
        ready = tmp / "ready.json"
        log = (tmp / "collector.log").open("w")
        proc = subprocess.Popen(
            [str(BIN / "casefile-collector"), "serve", "--address", "127.0.0.1:0", "--web-address", "127.0.0.1:0",
             "--data-dir", str(data), "--ready-file", str(ready)], stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            while not ready.exists():
                if proc.poll() is not None:
                    raise SystemExit((tmp / "collector.log").read_text())
                time.sleep(0.05)
            info = json.loads(ready.read_text())
            ids = {}
            with open_channel(parse_address(info["address"]), ca_fingerprint=info["fingerprint"]) as ch:
                agent = enroll(ch, token=enroll_token, key=key, hostname="big-host", agent_version="bench").agent_id
                for name, path in (("big", big), ("small", small)):
                    bundle_id = verify_bundle(path).manifest.bundle_id
                    upload_bundle(ch, path, bundle_id=bundle_id, target=UploadTarget(key=key, agent_id=agent))
                    ids[name] = bundle_id
            # The collector analyses each bundle once after its receipt, in a worker thread of the
            # same process: for the 1M-line bundle that is seconds of CPU (and the GIL). The pages
            # are timed once it is done, not while it competes with them.
            t0 = time.perf_counter()
            with Store.open(url) as store:
                while any(store.get_analysis(b) is None for b in ids.values()):
                    if time.perf_counter() - t0 > 600 or proc.poll() is not None:
                        raise SystemExit("the uploaded bundles were not analysed in 600 s")
                    time.sleep(0.2)
            print(f"uploaded bundles analysed {time.perf_counter() - t0:.1f} s after the upload", file=sys.stderr)
            web = Client(info["web_port"], data / "tls" / "collector.crt")
            web.sign_in(token)

            def get(path: str) -> Callable[[], object]:
                def call() -> object:
                    status, body = web.call("GET", path)
                    assert status == 200, (path, status, body[:500])
                    return body
                return call

            big_id, small_id = ids["big"], ids["small"]

            def second(path: str) -> dict[str, tuple[str, int]]:
                """The page after ``path``'s first, if it links one (a console before paging did not)."""
                found = re.search(r'<a rel="next" href="([^"]+)">', web.call("GET", path)[1])
                return {f"{path[1:]}, page 2": (found.group(1).replace("&amp;", "&"), args.reps)} if found else {}

            shapes = {
                "cases": ("/cases", args.reps),
                **second("/cases"),
                "hosts": ("/hosts", args.reps),
                **second("/hosts"),
                "host (busiest, 100 bundles)": ("/host?name=host-0000", args.reps),
                "bundle (small)": (f"/bundles/{small_id}", args.reps),
                "bundle (1M lines)": (f"/bundles/{big_id}", args.reps),
                "logs, first page": (f"/bundles/{big_id}/logs", args.reps),
                "logs, page 100": (f"/bundles/{big_id}/logs?page=99", args.reps),
                "logs, kernel err": (f"/bundles/{big_id}/logs?source=kernel&severity=err", args.reps),
                "logs, rare text (full scan)": (f"/bundles/{big_id}/logs?text=no-such-text", args.scan_reps),
            }
            results = {name: _timed(get(path), reps) for name, (path, reps) in shapes.items()}
        finally:
            proc.terminate()
            proc.wait(60)
            log.close()
    load = os.getloadavg()
    print(f"rows {args.rows:,}; lines {args.lines:,}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    for name, samples in results.items():
        print(f"{name}: p50 {_pct(samples, 0.5):.1f} ms, p95 {_pct(samples, 0.95):.1f} ms "
              f"(min {min(samples):.1f}, max {max(samples):.1f}, n {len(samples)})")
    print(f"baseline Store.list_bundles(1000): p50 {_pct(direct, 0.5):.1f} ms, p95 {_pct(direct, 0.95):.1f} ms")
    print(f"baseline full decompress + json.loads of the big bundle: {statistics.median(floor) * 1000:.0f} ms "
          f"({', '.join(f'{f * 1000:.0f}' for f in floor)})")


if __name__ == "__main__":
    main()
