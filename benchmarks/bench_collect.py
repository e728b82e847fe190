"""One-shot collection: `casefile collect` beside `sos report --batch`, in the same run.

    .venv/bin/python benchmarks/bench_collect.py [--runs 5] [--sos-runs 1]

Both tools run as whole processes (what a customer waits for), one after another on
the same machine. sos comes from Debian's `sosreport` package (`apt-get install
sosreport`); without it the sos column is skipped and no ratio is printed. Prints a
Markdown row for benchmarks/README.md and JSON with every sample.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def timed(argv: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def newest(folder: Path, pattern: str) -> Path:
    return max(folder.glob(pattern), key=lambda p: p.stat().st_mtime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sos-runs", type=int, default=1)
    opts = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="casefile-bench-"))
    home = work / "home"
    cf_times, cf_sizes = [], []
    timed([str(BIN / "casefile"), "collect", "--output", str(work / "warm"), "--home", str(home)], work)
    for i in range(opts.runs):
        out = work / f"cf{i}"
        cf_times.append(timed([str(BIN / "casefile"), "collect", "--output", str(out), "--home", str(home)], work))
        cf_sizes.append(newest(out, "*.tar.zst").stat().st_size)
    sos = shutil.which("sos") or shutil.which("sosreport")
    sos_times, sos_sizes = [], []
    if sos:
        for i in range(opts.sos_runs):
            out = work / f"sos{i}"
            out.mkdir()
            argv = (
                [sos, "report", "--batch", "--tmp-dir", str(out)]
                if sos.endswith("sos")
                else [sos, "--batch", "--tmp-dir", str(out)]
            )
            sos_times.append(timed(argv, work))
            sos_sizes.append(newest(out, "sosreport-*.tar.*").stat().st_size)
    cf_t, cf_s = statistics.median(cf_times), statistics.median(cf_sizes)
    result = {
        "machine": f"{platform.node()} {platform.machine()} {psutil.cpu_count()} cpu "
        f"{psutil.virtual_memory().total / 1024**3:.0f} GiB, {platform.platform()}",
        "casefile_s": cf_times,
        "casefile_bytes": cf_sizes,
        "sos_s": sos_times,
        "sos_bytes": sos_sizes,
    }
    print(json.dumps(result, indent=1))
    date = time.strftime("%Y-%m-%d")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    if sos_times:
        sos_t, sos_s = statistics.median(sos_times), statistics.median(sos_sizes)
        print(
            f"| one-shot collect (default scope) | `python benchmarks/bench_collect.py --runs {opts.runs}` | "
            f"{cf_t:.2f} s, {cf_s / 1024:.0f} KiB (median of {opts.runs}) | sos report --batch: {sos_t:.1f} s, "
            f"{sos_s / 1024**2:.2f} MiB | {sos_t / cf_t:.0f}x faster, {sos_s / cf_s:.0f}x smaller | {date} | {commit} |"
        )
    else:
        print(f"casefile collect: {cf_t:.2f} s median, {cf_s} bytes; sos not installed, no baseline")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
