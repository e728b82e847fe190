"""One-shot collection: `casefile collect` beside `sos report --batch`, in the same run.

    .venv/bin/python benchmarks/bench_collect.py [--runs 5] [--sos-runs 1] [--baseline-set KEY=VALUE ...] [--only C]

``--baseline-set`` adds a second casefile column, run in alternation with the default:
``casefile collect --set KEY=VALUE`` (e.g. ``frag_free_budget_s=3600``, the free-space
map unbounded as before it had its own bound), so both see the same load.

Both tools run as whole processes (what a customer waits for) on the same machine, each
warmed once unmeasured, then alternating run by run. sos comes from Debian's `sosreport` package (`apt-get install
sosreport`); without it the sos column is skipped and no ratio is printed. Prints a
Markdown row for benchmarks/README.md and JSON with every sample.
"""

from __future__ import annotations

import argparse
import json
import os
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


def timed(argv: list[str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of the command's main process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {proc.returncode}")
    return elapsed, usage.ru_maxrss * 1024  # Linux reports KiB


def newest(folder: Path, pattern: str) -> Path:
    return max(folder.glob(pattern), key=lambda p: p.stat().st_mtime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sos-runs", type=int, default=1)
    ap.add_argument("--baseline-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--only", default="", help="casefile collect --only (e.g. fragmentation): one collector's share")
    opts = ap.parse_args()
    # What a customer runs is an installed wheel, whose bytecode pip wrote at install time;
    # this tree is an editable install, so write ours here (sos's comes from its package).
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *(str(root / d) for d in ("agent", "protos", "plugins"))],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    work = Path(tempfile.mkdtemp(prefix="casefile-bench-"))
    home = work / "home"
    cf_times, cf_sizes, cf_rss = [], [], []
    sos = shutil.which("sos") or shutil.which("sosreport")
    sos_times, sos_sizes, sos_rss = [], [], []

    def casefile_run(out: Path, sets: tuple[str, ...] = ()) -> tuple[float, int]:
        extra = [a for kv in sets for a in ("--set", kv)] + (["--only", opts.only] if opts.only else [])
        return timed([str(BIN / "casefile"), "collect", "--output", str(out), "--home", str(home), *extra], work)

    base_times: list[float] = []

    def sos_run(out: Path) -> tuple[float, int]:
        assert sos is not None
        out.mkdir()
        argv = (
            [sos, "report", "--batch", "--tmp-dir", str(out)]
            if sos.endswith("sos")
            else [sos, "--batch", "--tmp-dir", str(out)]
        )
        return timed(argv, work)

    # Both warmed once (page cache, the services sos queries), then their runs alternate,
    # so each sees the machine as the other does: sos's own time moves by seconds over
    # an afternoon with what the machine's services are doing.
    casefile_run(work / "warm")
    if sos and opts.sos_runs:
        sos_run(work / "sos-warm")
    for i in range(max(opts.runs, opts.sos_runs if sos else 0)):
        if i < opts.runs:
            out = work / f"cf{i}"
            t, rss = casefile_run(out)
            cf_times.append(t)
            cf_rss.append(rss)
            cf_sizes.append(newest(out, "*.tar.zst").stat().st_size)
            if opts.baseline_set:
                base_times.append(casefile_run(work / f"base{i}", tuple(opts.baseline_set))[0])
        if sos and i < opts.sos_runs:
            out = work / f"sos{i}"
            t, rss = sos_run(out)
            sos_times.append(t)
            sos_rss.append(rss)
            archive = [p for p in out.glob("sosreport-*.tar.*") if not p.name.endswith(".sha256")]
            sos_sizes.append(max(p.stat().st_size for p in archive))
    cf_t, cf_s = statistics.median(cf_times), statistics.median(cf_sizes)
    result = {
        "machine": f"{platform.node()} {platform.machine()} {psutil.cpu_count()} cpu "
        f"{psutil.virtual_memory().total / 1024**3:.0f} GiB, {platform.platform()}",
        "casefile_s": cf_times,
        "casefile_bytes": cf_sizes,
        "sos_s": sos_times,
        "sos_bytes": sos_sizes,
        "baseline_set": opts.baseline_set,
        "baseline_s": base_times,
    }
    print(json.dumps(result, indent=1))
    date = time.strftime("%Y-%m-%d")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    cf_m = max(cf_rss) / 1024**2
    if sos_times:
        sos_t, sos_s = statistics.median(sos_times), statistics.median(sos_sizes)
        sos_m = max(sos_rss) / 1024**2
        print(
            f"| one-shot collect (default scope) | `python benchmarks/bench_collect.py --runs {opts.runs} "
            f"--sos-runs {opts.sos_runs}` | "
            f"{cf_t:.2f} s, {cf_s / 1024:.0f} KiB, peak RSS {cf_m:.0f} MiB (median of {opts.runs}) | "
            f"sos report --batch: {sos_t:.1f} s, {sos_s / 1024**2:.2f} MiB, peak RSS {sos_m:.0f} MiB | "
            f"{sos_t / cf_t:.1f}x faster | {date} | {commit} |"
        )
    else:
        print(f"casefile collect: {cf_t:.2f} s median, {cf_s} bytes, peak RSS {cf_m:.0f} MiB; sos not installed")
    if base_times:
        b_t = statistics.median(base_times)
        print(f"casefile collect --set {' '.join(opts.baseline_set)}: {b_t:.2f} s median "
              f"({min(base_times):.2f}-{max(base_times):.2f}); default {cf_t:.2f} s "
              f"({min(cf_times):.2f}-{max(cf_times):.2f}): {b_t / cf_t:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
