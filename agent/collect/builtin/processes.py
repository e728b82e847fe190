"""Processes: totals, zombies, threads, and the top N by CPU and by resident memory.

CPU % is measured, not asked for: two ``process_iter`` passes ``processes_sample_s`` apart
(default 0.25 s), each process's Δ(user+system) over the wall-clock Δ. The first pass
reads only CPU times and start time (one ``/proc/<pid>/stat`` read each on Linux): it
runs while the CLI loads its modules, and every file read there waits for the GIL. Keyed
by (pid, create_time) so a reused pid is not mistaken for the old process; 100 % = one
core, as in top. Only the ``cpu`` collector may call ``psutil.cpu_percent`` (module-global
state); this collector is the only caller of ``process_iter``. Cost is about 0.07 ms per
process per pass (field-notes §3): a few hundred ms with thousands of processes, and
``heapq.nlargest`` keeps the ranking O(n).

The agent's own processes (this one and its children, e.g. the fragmentation walker)
are in the ranking like any other, marked ``agent``: rules leave them out.

Never asked for: ``environ`` (it makes psutil drop kernel threads as root), open
files and ``memory_full_info`` (slow, privileged). The command line *is* collected: the
privacy phase redacts it. Zombies are counted from ``/proc/*/stat`` on Linux because
psutil 7 leaves them out of ``process_iter`` (psutil #2793).
"""

from __future__ import annotations

import datetime as dt
import heapq
import os
import time
from dataclasses import dataclass

import psutil

from agent.collect.framework import CollectContext, Collector, current_platform
from agent.collect.options import FloatOption, IntOption
from protos import facts_pb2

__all__ = ["ProcessesCollector", "count_zombies"]

_ATTRS = ["pid", "ppid", "name", "username", "cpu_times", "memory_info", "create_time", "num_threads", "status"]
_MAX_CMDLINE = 4096
_MARGIN_S = 0.5


@dataclass(frozen=True)
class _Seen:
    pid: int
    ppid: int
    name: str
    username: str
    cpu_s: float
    rss: int
    create_time: float
    threads: int
    status: str


def _snapshot() -> dict[tuple[int, float], _Seen]:
    seen: dict[tuple[int, float], _Seen] = {}
    for proc in psutil.process_iter(_ATTRS):
        info = proc.info
        times = info.get("cpu_times")
        mem = info.get("memory_info")
        create = float(info.get("create_time") or 0.0)
        pid = int(info["pid"])
        seen[(pid, create)] = _Seen(
            pid=pid,
            ppid=int(info.get("ppid") or 0),
            name=str(info.get("name") or ""),
            username=str(info.get("username") or ""),
            cpu_s=float(times.user + times.system) if times is not None else 0.0,
            rss=int(mem.rss) if mem is not None else 0,
            create_time=create,
            threads=int(info.get("num_threads") or 0),
            status=str(info.get("status") or ""),
        )
    return seen


def _cpu_seconds() -> dict[tuple[int, float], float]:
    """user+system CPU seconds per (pid, create_time): one read of /proc/<pid>/stat each on Linux."""
    seen: dict[tuple[int, float], float] = {}
    for proc in psutil.process_iter(["cpu_times", "create_time"]):
        times = proc.info.get("cpu_times")
        key = (int(proc.pid), float(proc.info.get("create_time") or 0.0))
        seen[key] = float(times.user + times.system) if times is not None else 0.0
    return seen


def _agent_pids(seen: dict[tuple[int, float], _Seen]) -> frozenset[int]:
    """This process and its descendants among ``seen`` (the fragmentation walker, commands
    run): the collection's own work, marked ``agent`` so that no one mistakes it for the
    host's. From the pass's own parent pids: no extra pass over every process."""
    children: dict[int, list[int]] = {}
    for p in seen.values():
        children.setdefault(p.ppid, []).append(p.pid)
    ours, todo = {os.getpid()}, [os.getpid()]
    while todo:
        for kid in children.get(todo.pop(), ()):
            if kid not in ours:
                ours.add(kid)
                todo.append(kid)
    return frozenset(ours)


def count_zombies(proc_root: str = "/proc") -> int:
    """Processes in state Z, read from ``<proc_root>/<pid>/stat``."""
    count = 0
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc_root}/{entry}/stat", "rb") as fh:
                stat = fh.read(512)
        except OSError:
            continue  # it exited meanwhile
        # The name in parentheses may itself hold ") "; the state follows the last ")".
        close = stat.rfind(b")")
        if close != -1 and stat[close + 2 : close + 3] == b"Z":
            count += 1
    return count


def _cmdline(pid: int) -> str:
    try:
        args = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return ""
    text = " ".join(args)
    return text if len(text) <= _MAX_CMDLINE else text[:_MAX_CMDLINE] + "…"


SAMPLE = FloatOption("processes_sample_s", 0.25, "the per-process CPU window, seconds", maximum=30.0)
TOP_N = IntOption("processes_top_n", 15, "processes listed in each top list", minimum=1, maximum=500)


class ProcessesCollector(Collector):
    name = "processes"
    description = "Process count, zombies, threads, top processes by CPU (sampled) and memory"
    budget_s = 4.0
    facts_field = "processes"
    facts_type = facts_pb2.ProcessFacts

    options = (SAMPLE, TOP_N)

    def collect(self, ctx: CollectContext) -> facts_pb2.ProcessFacts:
        wanted = ctx.get(SAMPLE)
        top_n = ctx.get(TOP_N)
        started = time.monotonic()
        before = _cpu_seconds()
        t0 = time.monotonic()
        # The second pass (every field) costs more than the first (CPU times only);
        # the first's cost is the floor of what is left to fit in the budget.
        sample = min(wanted, max(0.0, ctx.remaining() - _MARGIN_S - (t0 - started)))
        if sample < wanted:
            ctx.warn(f"process sample shortened from {wanted:g} s to {sample:.2f} s")
        time.sleep(sample)
        after = _snapshot()
        ours = _agent_pids(after)
        elapsed = max(time.monotonic() - t0, 1e-6)

        cpu: dict[tuple[int, float], float] = {}
        for key, now in after.items():
            old = before.get(key)
            # A process born during the sample counts its whole CPU time since birth.
            delta = now.cpu_s - (old if old is not None else 0.0)
            cpu[key] = max(0.0, delta) / elapsed * 100.0

        facts = facts_pb2.ProcessFacts(
            total=len(after),
            threads=sum(p.threads for p in after.values()),
            sample_seconds=elapsed,
        )
        if current_platform() == "linux":
            facts.zombies = count_zombies()
        else:
            facts.zombies = sum(1 for p in after.values() if p.status == psutil.STATUS_ZOMBIE)
        for key in heapq.nlargest(top_n, cpu, key=cpu.__getitem__):
            self._fill(facts.top_cpu.add(), after[key], cpu[key], ours)
        for key in heapq.nlargest(top_n, after, key=lambda k: after[k].rss):
            self._fill(facts.top_rss.add(), after[key], cpu.get(key, 0.0), ours)
        return facts

    @staticmethod
    def _fill(info: facts_pb2.ProcessInfo, p: _Seen, cpu_percent: float, ours: frozenset[int]) -> None:
        info.pid = p.pid
        info.agent = p.pid in ours
        info.name = p.name
        info.username = p.username
        info.cpu_percent = round(cpu_percent, 2)
        info.rss = p.rss
        info.cmdline = _cmdline(p.pid)
        info.num_threads = p.threads
        info.status = p.status
        if p.create_time > 0:
            info.started.FromDatetime(dt.datetime.fromtimestamp(p.create_time, dt.UTC))
