"""The single file (``make dist``) against the installed package: size and start-up.

    make dist && .venv/bin/python benchmarks/bench_dist.py [--runs 7]

Times ``casefile --version`` (start-up alone: the single file unpacks itself to a
temporary folder on every start) and a default ``casefile collect`` (what a customer
waits for), each as a whole process, alternating installed / single file run by run
after one unmeasured warm-up of each. Prints a Markdown row for benchmarks/README.md
and JSON with every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children): on a shared machine
    under load the wall time waits for the cores; the CPU time is the work itself."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s ({min(xs):.2f} to {max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    opts = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from agent.version import __version__

    single = ROOT / "dist" / f"casefile-{__version__}-linux-{platform.machine()}"
    if not single.exists():
        raise SystemExit(f"{single} is missing: run `make dist` first")
    installed = BIN / "casefile"
    work = Path(tempfile.mkdtemp(prefix="casefile-bench-dist-"))
    samples: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for label in ("installed", "single"):
        for what in ("version", "collect"):
            samples[f"{label} {what}"] = []
            cpu[f"{label} {what}"] = []
    load_before = os.getloadavg()
    cmds = {
        "version": lambda exe, i: [str(exe), "--version"],
        "collect": lambda exe, i: [str(exe), "collect", "-o", str(work / f"out{i}"), "--home", str(work / "home")],
    }
    for i in range(opts.runs + 1):
        for label, exe in (("installed", installed), ("single", single)):
            for what, cmd in cmds.items():
                took, used = timed(cmd(exe, i), work)
                if i:  # the first round warms the page cache and the key
                    samples[f"{label} {what}"].append(took)
                    cpu[f"{label} {what}"].append(used)
    load = (load_before, os.getloadavg())
    size = single.stat().st_size / 2**20
    v_ratio = statistics.median(samples["single version"]) / statistics.median(samples["installed version"])
    c_ratio = statistics.median(samples["single collect"]) / statistics.median(samples["installed collect"])
    cpu_ratio = statistics.median(cpu["single collect"]) / statistics.median(cpu["installed collect"])
    print(json.dumps({"size_mib": round(size, 1), "samples": samples, "cpu_s": cpu, "load": load}, indent=1))
    print(
        f"| single file ({size:.1f} MiB) `casefile --version` / default `collect` "
        f"| `.venv/bin/python benchmarks/bench_dist.py --runs {opts.runs}` "
        f"| {spread(samples['single version'])} / {spread(samples['single collect'])} "
        f"| installed: {spread(samples['installed version'])} / {spread(samples['installed collect'])} "
        f"| {v_ratio:.2f}x / **{c_ratio:.2f}x** (goal collect ≤ 1.5x); CPU time of a collect "
        f"{statistics.median(cpu['single collect']):.2f} s against "
        f"{statistics.median(cpu['installed collect']):.2f} s, "
        f"{cpu_ratio:.2f}x; load average {load[0][0]:.1f} before, {load[1][0]:.1f} after |"
    )


if __name__ == "__main__":
    main()
