"""The processes collector's cost as the process count grows, beside `ps` in the same run.

    .venv/bin/python benchmarks/bench_processes.py [--extra 0,500,2000] [--runs 3]

For each count, that many idle ``sleep`` processes are started (they end by themselves
after 10 minutes, and are killed when the script ends), then the ``processes`` collector
runs alone with its sampling window set to 0 (so what is timed is its two passes over
every process, the ranking and the top-N command lines), and ``ps -eo pid,ppid,user,
stat,rss,time,comm,args`` runs as the baseline: one pass, what an engineer types.
Prints a Markdown row per count for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time

from agent.collect import CollectionSpec, run_collection
from agent.collect.builtin.processes import ProcessesCollector

PS = ["ps", "-eo", "pid,ppid,user,stat,rss,time,comm,args"]


def collector_seconds() -> tuple[float, int]:
    spec = CollectionSpec(options={"processes_sample_s": 0.0, "lower_priority": False})
    t0 = time.perf_counter()
    with run_collection(spec, collectors=[ProcessesCollector]) as result:
        elapsed = time.perf_counter() - t0
        return elapsed, int(result.snapshot.processes.total)


def ps_seconds() -> float:
    t0 = time.perf_counter()
    subprocess.run(PS, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--extra", default="0,500,2000", help="comma-separated counts of extra idle processes")
    ap.add_argument("--runs", type=int, default=3)
    opts = ap.parse_args()
    rows = []
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        for extra in sorted(int(x) for x in opts.extra.split(",")):
            while len(sleepers) < extra:
                sleepers.append(subprocess.Popen(["sleep", "600"]))
            time.sleep(0.5)  # let them settle into their sleep
            ours, theirs, total = [], [], 0
            for _ in range(opts.runs):  # alternating, so drift hits both alike
                seconds, total = collector_seconds()
                ours.append(seconds)
                theirs.append(ps_seconds())
            a, b = statistics.median(ours), statistics.median(theirs)
            rows.append(
                f"| processes collector, {total:,} processes ({extra:,} extra idle), window 0 "
                f"| `.venv/bin/python benchmarks/bench_processes.py --extra {opts.extra} --runs {opts.runs}` "
                f"| {a * 1000:.0f} ms (median of {opts.runs}; {a / total * 1000:.2f} ms per process) "
                f"| `{' '.join(PS)}`: {b * 1000:.0f} ms | {a / b:.1f}x ps's time |"
            )
    finally:
        for p in sleepers:
            p.kill()
        for p in sleepers:
            p.wait()
    print(f"machine: {platform.machine()}, {platform.python_version()}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
