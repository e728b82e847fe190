"""Redaction throughput and its share of a default-scope collection.

    .venv/bin/python benchmarks/bench_redact.py [--runs 5] [--lines 200000]

1. Scrubbing throughput (one core, in-process, ``Redactor.redact_stream``) on generated
   plain syslog lines and on secret-dense lines, for profiles standard and private; and
   the same plain lines as a ``logs/*.jsonl`` member (the log path: JSON records,
   redacted in decoded form).
2. The redaction share of a default-scope one-shot collection: the same collection
   sealed through ``collect_bundle`` (profile standard: redaction + leak gate) against a
   baseline *in this script only* that writes the same run with no privacy phase. Runs
   alternate so drift hits both sides alike; medians are compared.

Prints JSON with every sample and a Markdown row for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import platform
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import json_format

from agent.analysis import BundleView, LogRecord, seal_outputs
from agent.analysis.view import parse_log_line
from agent.bundle import BundleMeta, BundleWriter, new_bundle_id
from agent.collect import CollectionSpec, run_collection
from agent.keys import SigningKey
from agent.oneshot import collect_bundle
from agent.redact import Harvested, Redactor, get_profile

HOSTS = ["web01", "db02", "cache03"]
PROCS = ["sshd[1201]", "systemd[1]", "kernel", "CRON[4242]", "nginx[88]", "postgres[900]"]
MSGS = [
    "Accepted publickey for deploy from 192.0.2.{n} port 5{n} ssh2: ED25519 SHA256:abc",
    "Started Session {n} of user deploy.",
    "eth0: Link is Up - 1Gbps/Full - flow control rx/tx",
    "(root) CMD (run-parts /etc/cron.hourly)",
    "connection from 198.51.100.{n} closed after {n} requests",
    "checkpoint complete: wrote {n} buffers (0.1%); sync files={n}, longest=0.001 s",
]
SECRET_MSGS = [
    "export AWS_ACCESS_KEY_ID=AKIAUJZDEGXDNCF32EPF AWS_SECRET_ACCESS_KEY=2hpChYgCfrL1spNxnyVmihA+2O76UMFxFkM+R5Kj",
    "GET https://bob:hunter2@api.example.com/v1?token=Zq81LmW0cPzT4rYv9xKd from 10.0.{n}.1 user alice@example.com",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "db password=S3cret{n} api_key=ghp_hGAkWvj7FAc9QeWJKY40uvSwMFLZDe1f8rES mac 3c:22:fb:12:34:{n:02x}",
]


def make_lines(count: int, msgs: list[str], seed: int) -> bytes:
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        n = rnd.randrange(1, 250)
        msg = rnd.choice(msgs).format(n=n)
        out.append(f"Nov 23 10:{i // 60 % 60:02d}:{i % 60:02d} {rnd.choice(HOSTS)} {rnd.choice(PROCS)}: {msg}\n")
    return "".join(out).encode()


def as_jsonl(data: bytes) -> bytes:
    """The lines as the logs collector writes them (ts parsed out, the rest in msg)."""
    out = []
    for line in data.decode().splitlines():
        obj = {"ts": "2026-11-23T10:00:00.000000Z", "src": "syslog", "sev": None, "msg": line[16:]}
        out.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
    return "".join(out).encode()


def throughput(data: bytes, profile: str, lines: int, repeat: int = 0, member: str = "bench") -> dict[str, float]:
    """Best wall time, and the median and range of the process's CPU time: on a shared
    machine the wall clock counts the time other processes held the core, CPU time does
    not (it is what one core spends on redaction). Best of several passes: other
    processes only ever slow a pass down."""
    repeat = repeat or (3 if profile == "private" else 9)
    harvested = Harvested(hostnames=("web01",), ips=("192.0.2.7",), users=("deploy",))
    best = float("inf")
    cpu: list[float] = []
    for _ in range(repeat):
        r = Redactor(get_profile(profile), key=b"k" * 32, harvested=harvested)
        t0, c0 = time.perf_counter(), time.process_time()
        r.redact_stream(io.BytesIO(data), io.BytesIO(), member)
        best = min(best, time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "lines_per_s": lines / best,
        "mb_per_s": len(data) / best / 1e6,
        "cpu_lines_per_s": lines / statistics.median(cpu),
        "cpu_lines_per_s_low": lines / max(cpu),
        "cpu_lines_per_s_high": lines / min(cpu),
    }


def baseline_collect(key: SigningKey, out: Path) -> None:
    """The same run sealed without any privacy phase (benchmark baseline only)."""
    with run_collection(CollectionSpec()) as result:
        s = result.snapshot
        s.bundle_id = new_bundle_id()
        now = dt.datetime.now(dt.UTC)
        meta = BundleMeta(bundle_id=s.bundle_id, hostname=s.host.hostname or "unknown", created_at=now)
        out.mkdir(parents=True, exist_ok=True)
        with BundleWriter(out, key=key, meta=meta) as w:
            w.add_bytes("facts.pb", s.SerializeToString(deterministic=True))
            w.add_bytes("facts.json", json_format.MessageToJson(s, indent=1, sort_keys=True).encode())
            for a in result.artifacts:
                with a.open() as src, w.open_member(a.path) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            # The same analysis the real path seals (findings.json, report.html), so the
            # difference measured is the privacy phase alone.
            logs = [a for a in result.artifacts if a.path.startswith("logs/") and a.path.endswith(".jsonl")]

            def records() -> Iterator[LogRecord]:
                for a in logs:
                    with a.open() as fh:
                        for line in fh:
                            rec = parse_log_line(line.decode("utf-8", "replace"))
                            if rec is not None:
                                yield rec

            for name, data in seal_outputs(BundleView.from_snapshot(s, records if logs else ())).items():
                w.add_bytes(name, data)
            w.finish(spec=result.spec_dict(), collectors=result.status_dicts(), truncated=result.truncated())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=12)  # the spread is ±15 %: fewer runs mislead
    ap.add_argument("--lines", type=int, default=200_000)
    opts = ap.parse_args()
    plain = make_lines(opts.lines, MSGS, 1)
    dense = make_lines(opts.lines // 4, SECRET_MSGS, 2)
    tp = {
        "plain-standard": throughput(plain, "standard", opts.lines),
        "dense-standard": throughput(dense, "standard", opts.lines // 4),
        "plain-private": throughput(plain, "private", opts.lines),
        "dense-private": throughput(dense, "private", opts.lines // 4),
        "plain-jsonl-standard": throughput(as_jsonl(plain), "standard", opts.lines, member="logs/s.jsonl"),
        "plain-jsonl-private": throughput(as_jsonl(plain), "private", opts.lines, member="logs/s.jsonl"),
    }
    work = Path(tempfile.mkdtemp(prefix="casefile-bench-redact-"))
    key = SigningKey.generate()
    base_t: list[float] = []
    red_t: list[float] = []
    base_c: list[float] = []  # process CPU time: what a loaded machine's wall clock hides
    red_c: list[float] = []
    baseline_collect(key, work / "warm")  # warm caches, registry and imports
    for i in range(opts.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        baseline_collect(key, work / f"b{i}")
        base_t.append(time.perf_counter() - t0)
        base_c.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        collect_bundle(key=key, output_dir=work / f"r{i}")
        red_t.append(time.perf_counter() - t0)
        red_c.append(time.process_time() - c0)
    shutil.rmtree(work, ignore_errors=True)
    b, r = statistics.median(base_t), statistics.median(red_t)
    share = (r - b) / b * 100
    bc, rc = statistics.median(base_c), statistics.median(red_c)
    print(json.dumps({"throughput": tp, "baseline_s": base_t, "redacted_s": red_t, "baseline_cpu_s": base_c,
                      "redacted_cpu_s": red_c,
                      "machine": f"{platform.machine()} {platform.platform()}"}, indent=1))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    plain_s, dense_s = tp["plain-standard"], tp["dense-standard"]
    def cpu(key: str) -> str:
        t = tp[key]
        return f"{t['cpu_lines_per_s']:,.0f} ({t['cpu_lines_per_s_low']:,.0f} to {t['cpu_lines_per_s_high']:,.0f})"

    print(
        f"| redaction throughput, one core, CPU time (standard) | `bench_redact.py` | plain syslog "
        f"{cpu('plain-standard')} lines/s; secret-dense {cpu('dense-standard')} lines/s (median (range) of 5) | | | "
        f"{time.strftime('%Y-%m-%d')} | {commit} |"
    )
    print(
        f"| redaction throughput, one core, CPU time, log path and private | `bench_redact.py` | "
        f"`logs/*.jsonl` records {cpu('plain-jsonl-standard')} lines/s; private: plain {cpu('plain-private')}, "
        f"records {cpu('plain-jsonl-private')}, secret-dense {cpu('dense-private')} lines/s | | | "
        f"{time.strftime('%Y-%m-%d')} | {commit} |"
    )
    print(
        f"| redaction throughput, one core (standard; private in brackets) | `bench_redact.py` | plain syslog "
        f"{plain_s['lines_per_s']:,.0f} lines/s = {plain_s['mb_per_s']:.0f} MB/s "
        f"[{tp['plain-private']['lines_per_s']:,.0f}]; secret-dense {dense_s['lines_per_s']:,.0f} lines/s = "
        f"{dense_s['mb_per_s']:.1f} MB/s [{tp['dense-private']['lines_per_s']:,.0f}] | field notes §5.3: "
        f"57,000 / 15,600 lines/s | {plain_s['lines_per_s'] / 57000:.1f}x / {dense_s['lines_per_s'] / 15600:.1f}x "
        f"| {time.strftime('%Y-%m-%d')} | {commit} |"
    )
    js, jp = tp["plain-jsonl-standard"], tp["plain-jsonl-private"]
    print(
        f"| redaction throughput of the log path, one core (`logs/*.jsonl`, standard; private in brackets) "
        f"| `bench_redact.py` | plain syslog records {js['lines_per_s']:,.0f} lines/s = {js['mb_per_s']:.0f} MB/s "
        f"[{jp['lines_per_s']:,.0f}] | goal ≥ 200,000 lines/s | {js['lines_per_s'] / 200000:.1f}x "
        f"| {time.strftime('%Y-%m-%d')} | {commit} |"
    )
    print(
        f"| redaction share of default-scope collect (goal ≤ 10 %) | `bench_redact.py --runs {opts.runs}` | "
        f"{r:.2f} s with privacy phase (standard) | {b:.2f} s same run, no privacy phase | {share:+.1f} % "
        f"| {time.strftime('%Y-%m-%d')} | {commit} |"
    )
    print(
        f"| same runs, process CPU time (the collector threads and this process; the fragmentation child "
        f"is not counted) | `bench_redact.py --runs {opts.runs}` | {rc:.3f} s ({min(red_c):.3f} to {max(red_c):.3f}) "
        f"| {bc:.3f} s ({min(base_c):.3f} to {max(base_c):.3f}) | {(rc - bc) / bc * 100:+.1f} % "
        f"| {time.strftime('%Y-%m-%d')} | {commit} |"
    )

if __name__ == "__main__":
    main()
