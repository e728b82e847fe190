"""Diff of two real default-scope bundles of this machine.

    .venv/bin/python benchmarks/bench_diff.py [--runs 7]

Times ``diff_bundles`` on two freshly opened views (each run verifies both bundles,
runs every rule on both and compares every section). The baseline, in the same run,
is what any diff of findings must do anyway: open and verify both bundles and run the
rules on each (``BundleView.from_file`` + ``run_rules``, twice). The ratio is the cost
of the comparison itself on top. Prints a Markdown row and JSON with every sample.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.analysis import BundleView, diff_bundles, run_rules
from agent.keys import SigningKey
from agent.oneshot import collect_bundle


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    key = SigningKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        a = collect_bundle(key=key, output_dir=Path(tmp)).bundle.path
        b = collect_bundle(key=key, output_dir=Path(tmp)).bundle.path

        def baseline() -> None:
            for p in (a, b):
                run_rules(BundleView.from_file(p))

        def measured() -> None:
            diff_bundles(BundleView.from_file(a), BundleView.from_file(b))

        base: list[float] = []
        ours: list[float] = []
        for _ in range(args.runs):  # alternating, so that load on the machine falls on both alike
            base.append(_time(baseline))
            ours.append(_time(measured))
    mb, mo = statistics.median(base), statistics.median(ours)
    print(f"| diff of two real default bundles | `.venv/bin/python benchmarks/bench_diff.py --runs {args.runs}` "
          f"| {mo * 1000:.0f} ms ({min(ours) * 1000:.0f}-{max(ours) * 1000:.0f}) | open + verify + rules on both: "
          f"{mb * 1000:.0f} ms ({min(base) * 1000:.0f}-{max(base) * 1000:.0f}) | {mo / mb:.2f}x |")
    print(json.dumps({"diff_s": ours, "baseline_s": base}))


if __name__ == "__main__":
    main()
