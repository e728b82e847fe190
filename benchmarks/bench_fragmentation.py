"""Fragmentation sampling on this machine's root filesystem, against baselines in the same run.

Measures the default-bounds sampler (files mapped per second of FIEMAP, total time), then
on the same file list: ``filefrag`` via subprocess (the tool a support engineer would
script) and a plain ``os.stat`` walk. Prints one Markdown row for benchmarks/README.md.

    .venv/bin/python benchmarks/bench_fragmentation.py [--root /] [--max-files 4000] [--budget 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import time

from agent.collect import fiemap
from agent.collect.builtin import fragmentation_linux as lin


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/")
    ap.add_argument("--max-files", type=int, default=4000)
    ap.add_argument("--budget", type=float, default=3.0)
    args = ap.parse_args()
    bounds = lin.Bounds(max_files=args.max_files, budget_s=args.budget)

    started = time.perf_counter()
    fs = lin.sample_filesystem(args.root, bounds, rng=random.Random(1))
    total = time.perf_counter() - started

    # The same list once more, FIEMAP only (warm): the per-file cost without the walk.
    walked = lin.walk(args.root, bounds, time.monotonic() + args.budget * 0.75, random.Random(1))
    paths = list(dict.fromkeys(c.path for c in (*walked.uniform, *walked.largest)))
    t0 = time.perf_counter()
    mapped = 0
    for p in paths:
        try:
            fiemap.fragments_of(p)
            mapped += 1
        except (OSError, fiemap.ExtentMapError):
            pass
    fiemap_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for p in paths:
        with contextlib.suppress(OSError):
            os.stat(p)
    stat_s = time.perf_counter() - t0

    filefrag_s = float("nan")
    if shutil.which("filefrag"):
        t0 = time.perf_counter()
        for i in range(0, len(paths), 500):  # batches keep argv well under ARG_MAX
            subprocess.run(["filefrag", *paths[i : i + 500]], capture_output=True, check=False)
        filefrag_s = time.perf_counter() - t0

    rate = mapped / fiemap_s if fiemap_s else float("inf")
    ff_rate = len(paths) / filefrag_s if filefrag_s == filefrag_s and filefrag_s else float("nan")
    print(f"root {args.root}: {fs.note}")
    print(f"sampler total {total:.2f} s, {fs.files_sampled} files mapped; FIEMAP {mapped} files in {fiemap_s:.3f} s; "
          f"stat {stat_s:.3f} s; filefrag {filefrag_s:.2f} s")
    print()
    print("| figure | casefile | baseline (same run) | ratio |")
    print("|---|---|---|---|")
    print(
        f"| fragmentation sampling, root fs (max {args.max_files} files, {args.budget:g} s budget) "
        f"| {rate:,.0f} files/s FIEMAP, {total:.2f} s total ({fs.files_sampled} files) "
        f"| filefrag {ff_rate:,.0f} files/s; os.stat {len(paths) / stat_s if stat_s else 0:,.0f} files/s "
        f"| {rate / ff_rate if ff_rate == ff_rate and ff_rate else float('nan'):.1f}x filefrag |"
    )


if __name__ == "__main__":
    main()
