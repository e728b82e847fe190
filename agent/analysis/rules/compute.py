"""CPU, memory, swap and process rules."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.analysis.model import Evidence, Finding, Severity
from agent.analysis.rule import Rule

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = ["CpuSaturation", "MemoryPressure", "RunQueue", "RunawayProcess", "SwapActivity"]


def _gib(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB"


class MemoryPressure(Rule):
    code = "memory-pressure"
    title = "Memory pressure"
    description = "Little memory is available to new work."
    options = MappingProxyType({"warn_available_pct": 10.0, "crit_available_pct": 5.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        m = view.snapshot.memory
        if not m.total:
            return
        avail = 100.0 * m.available / m.total
        if avail >= self.opt("warn_available_pct"):
            return
        severity: Severity = "critical" if avail < self.opt("crit_available_pct") else "warning"
        yield self.finding(
            severity,
            f"Only {avail:.1f}% of memory available",
            f"{_gib(m.available)} of {_gib(m.total)} is available. The kernel is reclaiming cache and may "
            "swap or kill processes (OOM) under more load.",
            [Evidence("memory.available", m.available), Evidence("memory.total", m.total),
             Evidence("memory.percent", round(m.percent, 1))],
            "See which processes hold memory (top RSS in this report); look for a leak or a cache sized "
            "beyond this machine.",
        )


class SwapActivity(Rule):
    code = "swap-activity"
    title = "Swap in use or swapping"
    description = "Swap is largely used, or pages move to and from swap at a high rate."
    options = MappingProxyType({"used_pct": 50.0, "rate_bps": 1024.0 * 1024.0, "series_pct": 50.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        s = view.snapshot
        m = s.memory
        evidence: list[Evidence] = []
        reasons: list[str] = []
        if m.swap_total and m.swap_percent >= self.opt("used_pct"):
            evidence.append(Evidence("memory.swap_percent", round(m.swap_percent, 1)))
            reasons.append(f"{m.swap_percent:.0f}% of {_gib(m.swap_total)} swap is used")
        uptime = s.host.uptime_seconds
        rate = (m.swap_in + m.swap_out) / uptime if uptime > 0 else 0.0
        if rate >= self.opt("rate_bps"):
            evidence += [Evidence("memory.swap_in", m.swap_in), Evidence("memory.swap_out", m.swap_out),
                         Evidence("host.uptime_seconds", round(uptime))]
            reasons.append(f"pages moved to/from swap at {rate / 1024**2:.1f} MiB/s on average since boot")
        series = [x.swap_percent for x in s.timeseries.samples]
        if series and max(series) - min(series) >= 5 and max(series) >= self.opt("series_pct"):
            evidence.append(Evidence("timeseries.samples[*].swap_percent (max)", round(max(series), 1)))
            reasons.append("swap use changed during the collection window")
        if not reasons:
            return
        severity: Severity = "critical" if rate >= self.opt("rate_bps") and len(reasons) > 1 else "warning"
        yield self.finding(
            severity,
            "Swap activity",
            "; ".join(reasons).capitalize() + ". A machine that swaps stalls on page faults: everything is slow "
            "without any CPU being busy.",
            evidence,
            "Reduce memory use or add RAM; check vmstat 1 (si/so columns) during the slow period.",
        )


def _cpu_mean(view: BundleView) -> tuple[float, str]:
    samples = view.snapshot.timeseries.samples
    if samples:
        return statistics.fmean(x.cpu_percent for x in samples), "timeseries.samples[*].cpu_percent (mean)"
    return view.snapshot.cpu.total_percent, "cpu.total_percent"


class CpuSaturation(Rule):
    code = "cpu-saturation"
    title = "CPU saturated"
    description = "The CPUs were nearly fully busy over the collection window."
    options = MappingProxyType({"warn_pct": 90.0, "crit_pct": 98.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        busy, path = _cpu_mean(view)
        series = view.snapshot.timeseries
        # Over a one-shot collection much of the CPU can be the agent's own (the time
        # series says how much). The host is judged on what the other processes used of
        # the CPU the agent left them: a host already saturated still shows as such (its
        # processes take all that is left), an idle one does not (they take little of it).
        own = 0.0
        if series.agent_cpu_known and series.samples:
            own = min(statistics.fmean(x.agent_cpu_percent for x in series.samples), busy)
        level = 100.0 * (busy - own) / (100.0 - own) if own and own < 100.0 else busy
        if level < self.opt("warn_pct"):
            return
        t = view.snapshot.cpu.times_percent
        severity: Severity = "critical" if level >= self.opt("crit_pct") else "warning"
        evidence = [Evidence(path, round(busy, 1))]
        if own:
            evidence.append(Evidence("timeseries.samples[*].agent_cpu_percent (mean)", round(own, 1)))
            title = f"CPU {busy:.0f}% busy, {own:.0f}% of it this agent's collecting"
            share = (f" Of that, this agent's own collecting took {own:.0f}%; the other processes used "
                     f"{busy - own:.0f}%, {level:.0f}% of what it left them.")
        else:
            title, share = f"CPU {busy:.0f}% busy", ""
        yield self.finding(
            severity,
            title,
            f"The CPUs were {busy:.0f}% busy (user {t.user:.0f}%, system {t.system:.0f}%, "
            f"iowait {t.iowait:.0f}%, steal {t.steal:.0f}%).{share} Work queues up and latency grows.",
            [*evidence, Evidence("cpu.times_percent.system", round(t.system, 1)),
             Evidence("cpu.times_percent.steal", round(t.steal, 1))],
            "Look at the top CPU processes; high steal means the hypervisor is short of CPU, "
            "high system time points at the kernel (I/O, filesystem, interrupts).",
        )


class RunQueue(Rule):
    code = "run-queue"
    title = "Long run queue"
    description = "The load average per logical core is high: more runnable (or uninterruptible) tasks than cores."
    options = MappingProxyType({"warn_per_core": 2.0, "crit_per_core": 4.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        c = view.snapshot.cpu
        if c.logical_count <= 0:
            return
        per_core = max(c.load1, c.load5) / c.logical_count
        if per_core < self.opt("warn_per_core"):
            return
        severity: Severity = "critical" if per_core >= self.opt("crit_per_core") else "warning"
        yield self.finding(
            severity,
            f"Load {per_core:.1f} per core",
            f"Load average {c.load1:.1f} / {c.load5:.1f} / {c.load15:.1f} on {c.logical_count} logical cores. "
            "On Linux the load includes tasks blocked on I/O (state D), so a high load with idle CPUs "
            "means storage or NFS is stalling.",
            [Evidence("cpu.load1", round(c.load1, 2)), Evidence("cpu.load5", round(c.load5, 2)),
             Evidence("cpu.logical_count", c.logical_count)],
            "Check iowait and processes in state D (ps -eo state,pid,cmd | grep ^D).",
        )


class RunawayProcess(Rule):
    code = "process-runaway"
    title = "Runaway process"
    description = "One process holds most of the memory or burns whole cores."
    options = MappingProxyType({"rss_warn_pct": 50.0, "rss_crit_pct": 80.0, "cpu_pct": 90.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        s = view.snapshot
        total = s.memory.total
        # The agent's own processes (marked ``agent``) are the collection's work, not the host's.
        for i, p in enumerate(s.processes.top_rss):
            if p.agent:
                continue
            share = 100.0 * p.rss / total if total else 0.0
            if share < self.opt("rss_warn_pct"):
                continue
            severity: Severity = "critical" if share >= self.opt("rss_crit_pct") else "warning"
            yield self.finding(
                severity,
                f"{p.name} (pid {p.pid}) holds {share:.0f}% of memory",
                f"Process {p.name} (pid {p.pid}, user {p.username or '?'}) has {_gib(p.rss)} resident, "
                f"{share:.0f}% of {_gib(total)}.",
                [Evidence(f"processes.top_rss[{i}].name", p.name), Evidence(f"processes.top_rss[{i}].rss", p.rss),
                 Evidence("memory.total", total)],
                "Check whether its memory keeps growing (a leak) and its configured limits (heap, cache sizes).",
                subject=f"rss:{p.name}",
            )
        for i, p in enumerate(s.processes.top_cpu):
            if p.agent or p.cpu_percent < self.opt("cpu_pct"):
                continue
            yield self.finding(
                "warning",
                f"{p.name} (pid {p.pid}) uses {p.cpu_percent:.0f}% CPU",
                f"Process {p.name} (pid {p.pid}) used {p.cpu_percent:.0f}% of a core over "
                f"{s.processes.sample_seconds or 0:.1f} s ({p.num_threads} threads).",
                [Evidence(f"processes.top_cpu[{i}].name", p.name),
                 Evidence(f"processes.top_cpu[{i}].cpu_percent", round(p.cpu_percent, 1))],
                "If it should be idle, capture a stack sample (py-spy, jstack, perf top -p PID).",
                subject=f"cpu:{p.name}",
            )
