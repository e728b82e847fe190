"""How fast this machine is right now, printed beside a benchmark's figures.

The project's VMs differ by up to three times in plain Python speed from one session to
the next (the same hunt took 6 s on one and 21 s on another), so a figure means little
without the speed of the machine that gave it. ``machine_line()`` measures, in about two
seconds and before the timed work: a pure-Python loop (the interpreter's speed, what
most of the collector's per-request work scales with), SHA-256 over 64 MiB (the hashing
the ingest path does twice), and the CPU time the hypervisor took from this guest over
one second (steal).

    .venv/bin/python benchmarks/machine.py
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import time

import psutil


def _python_loop_s(n: int = 2_000_000) -> float:
    """Seconds for 10^7 additions in a Python loop (measured on ``n``, scaled)."""
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(n):
            total += i
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * (10_000_000 / n)


def _sha256_mib_s(mib: int = 64) -> float:
    data = os.urandom(1 << 20) * mib
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        hashlib.sha256(data).digest()
        runs.append(time.perf_counter() - start)
    return mib / statistics.median(runs)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line: CPU model and count, Python loop time, SHA-256 speed, load and steal."""
    loop_s = _python_loop_s()
    sha = _sha256_mib_s()
    times = psutil.cpu_times_percent(interval=1.0)
    steal = getattr(times, "steal", 0.0)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {_cpu_model()}, {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"Python loop of 10^7 additions {loop_s:.2f} s; SHA-256 {sha:,.0f} MiB/s; "
        f"load {load1:.2f}; steal {steal:.0f} % over 1 s"
    )


if __name__ == "__main__":
    print(machine_line())
