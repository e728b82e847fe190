"""CPU: counts, utilisation sampled over a short window, load, frequency and counters.

This is the only collector allowed to call ``psutil.cpu_percent`` and
``psutil.cpu_times_percent``: they keep module-global state between calls (keyed by
thread in psutil 7, but not safe to share), see the framework's docstring.
"""

from __future__ import annotations

import time

import psutil

from agent.collect.framework import CollectContext, Collector
from agent.collect.options import FloatOption
from protos import facts_pb2

_TIMES_FIELDS = ("user", "system", "idle", "iowait", "irq", "softirq", "steal", "nice")
# Leave the collector this much of its budget after the sample for the cheap calls.
_MARGIN_S = 0.25


SAMPLE = FloatOption("cpu_sample_s", 0.25, "the CPU measuring window, seconds", maximum=30.0)


class CpuCollector(Collector):
    name = "cpu"
    description = "CPU counts, per-core and total utilisation, load average, frequency, counters"
    budget_s = 3.0
    facts_field = "cpu"
    facts_type = facts_pb2.CpuFacts

    options = (SAMPLE,)

    def collect(self, ctx: CollectContext) -> facts_pb2.CpuFacts:
        wanted = ctx.get(SAMPLE)
        sample = min(wanted, max(0.0, ctx.remaining() - _MARGIN_S))
        if sample < wanted:
            ctx.warn(f"cpu sample shortened from {wanted:g} s to {sample:.2f} s to fit the budget")

        # One sleep between non-blocking calls, rather than two blocking cpu_percent(0.5)
        # calls in a row (1 s). The values from these first calls are meaningless.
        psutil.cpu_percent(interval=None)
        psutil.cpu_percent(interval=None, percpu=True)
        psutil.cpu_times_percent(interval=None)
        started = time.monotonic()
        time.sleep(sample)
        total = float(psutil.cpu_percent(interval=None))
        per_core = [float(p) for p in psutil.cpu_percent(interval=None, percpu=True)]
        times = psutil.cpu_times_percent(interval=None)
        elapsed = time.monotonic() - started

        facts = facts_pb2.CpuFacts(
            logical_count=psutil.cpu_count(logical=True) or 0,
            physical_count=psutil.cpu_count(logical=False) or 0,
            total_percent=total,
            per_core_percent=per_core,
            sample_seconds=elapsed,
        )
        for name in _TIMES_FIELDS:
            # iowait, softirq, steal and nice exist only on some platforms.
            setattr(facts.times_percent, name, float(getattr(times, name, 0.0)))

        try:
            # On Windows psutil emulates this with a thread; it reads zeros at first.
            facts.load1, facts.load5, facts.load15 = (float(x) for x in psutil.getloadavg())
        except (OSError, AttributeError) as exc:
            ctx.warn(f"load average unavailable: {exc}")
        _fill_frequency(facts, ctx)
        stats = psutil.cpu_stats()
        facts.ctx_switches = int(stats.ctx_switches)
        facts.interrupts = int(stats.interrupts)
        facts.soft_interrupts = int(stats.soft_interrupts)
        return facts


def _fill_frequency(facts: facts_pb2.CpuFacts, ctx: CollectContext) -> None:
    # Absent in many VMs and containers (no cpufreq in /sys): None, or an error on some
    # platforms. That is normal, so it is not even a warning.
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError, RuntimeError):
        freq = None
    if freq is None:
        return
    facts.freq_current_mhz = float(freq.current or 0.0)
    facts.freq_min_mhz = float(freq.min or 0.0)
    facts.freq_max_mhz = float(freq.max or 0.0)
