"""Analysis + HTML report: a default bundle and a bundle with 1,000,000 log lines.

    .venv/bin/python benchmarks/bench_analysis.py [--lines 1000000] [--runs 3]

Times ``BundleView.from_file`` (verification included) + ``analyse`` (all rules,
timeline, onset) + ``render_html``. The baseline, in the same run, is the least any
analysis must do with the same file: decompress the bundle and ``json.loads`` every
log line (no verification, no analysis). Goals: default < 2 s, 1M lines < 15 s.
Prints a Markdown row for benchmarks/README.md and JSON with every sample.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO, cast

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.analysis import BundleView, analyse, render_html
from agent.keys import SigningKey
from agent.oneshot import collect_bundle
from tests.fixtures.analysis.crafted import COLLECTED, healthy_snapshot, write_bundle

_MESSAGES = (
    ("journal", "info", "Started Session {} of user app."),
    ("syslog", "info", 'nginx[812]: 10.0.3.{} - - "GET /api/v1/items/{} HTTP/1.1" 200 5120'),
    ("syslog", "warning", "postgres[901]: LOG: checkpoint complete: wrote {} buffers"),
    ("syslog", "err", "app[4242]: request {} failed: upstream timeout after {} ms"),
    ("kernel", "err", "blk_update_request: I/O error, dev sdb, sector {} op 0x0:(READ) flags 0x80700"),
    ("kernel", "info", "EXT4-fs (sda1): mounted filesystem with ordered data mode {}"),
)


def million_lines(n: int) -> dict[str, bytes]:
    """``n`` realistic lines over 24 h in three sources, an error burst two hours before the end."""
    rng = random.Random(5)
    start = COLLECTED.timestamp() - 86400
    parts: dict[str, list[bytes]] = {"journal": [], "syslog": [], "kernel": []}
    for i in range(n):
        ts = start + 86400 * i / n
        burst = COLLECTED.timestamp() - 7200 <= ts < COLLECTED.timestamp() - 6600
        src, sev, tpl = _MESSAGES[4] if burst and i % 3 else rng.choice(_MESSAGES)
        msg = tpl.format(rng.randint(1, 10**6), rng.randint(1, 999))
        stamp = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lines = parts[src]
        lines.append(json.dumps({"ts": stamp, "src": src, "sev": sev, "msg": msg, "n": len(lines) + 1}).encode())
    return {k: b"\n".join(v) + b"\n" for k, v in parts.items()}


def baseline(path: Path) -> float:
    """Decompress the bundle and json-parse every log line: the floor for any analysis."""
    t0 = time.perf_counter()
    with path.open("rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|") as tar:
            for info in tar:
                if "/logs/" in info.name and info.isfile():
                    data = tar.extractfile(info)
                    assert data is not None
                    for line in data:
                        json.loads(line)
    return time.perf_counter() - t0


def analysed(path: Path) -> float:
    t0 = time.perf_counter()
    a = analyse(BundleView.from_file(path))
    render_html(a)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    key = SigningKey.generate()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        default = collect_bundle(key=key, output_dir=Path(tmp) / "default").bundle.path
        big = write_bundle(Path(tmp) / "big", key, healthy_snapshot(), million_lines(args.lines))
        for name, path in (("default", default), ("1M lines", big)):
            base = [baseline(path) for _ in range(args.runs)]
            ours = [analysed(path) for _ in range(args.runs)]
            results[name] = {"size": path.stat().st_size, "baseline_s": base, "analyse_render_s": ours}
    d, b = results["default"], results["1M lines"]
    med = statistics.median
    print("| machine | default bundle: analyse+HTML (baseline) | 1M lines: analyse+HTML (baseline) | ratio 1M |")
    print("|---|---|---|---|")
    print(
        f"| {platform.machine()} {platform.python_version()} | {med(d['analyse_render_s']):.2f} s "
        f"({med(d['baseline_s']):.2f} s) | {med(b['analyse_render_s']):.2f} s ({med(b['baseline_s']):.2f} s) | "
        f"{med(b['analyse_render_s']) / med(b['baseline_s']):.2f}x |"
    )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
