"""Memory: physical memory and swap, as psutil reports them."""

from __future__ import annotations

import psutil

from agent.collect.framework import CollectContext, Collector
from protos import facts_pb2


class MemoryCollector(Collector):
    name = "memory"
    description = "Physical memory and swap usage, swap-in/out since boot"
    budget_s = 2.0
    facts_field = "memory"
    facts_type = facts_pb2.MemoryFacts

    def collect(self, ctx: CollectContext) -> facts_pb2.MemoryFacts:
        vm = psutil.virtual_memory()
        facts = facts_pb2.MemoryFacts(
            total=int(vm.total),
            available=int(vm.available),
            used=int(vm.used),
            free=int(vm.free),
            percent=float(vm.percent),
            # buffers/cached/shared exist only on Linux and BSDs.
            buffers=int(getattr(vm, "buffers", 0)),
            cached=int(getattr(vm, "cached", 0)),
            shared=int(getattr(vm, "shared", 0)),
        )
        try:
            swap = psutil.swap_memory()
        except (OSError, RuntimeError) as exc:  # e.g. no /proc/vmstat in some sandboxes
            ctx.warn(f"swap figures unavailable: {exc}")
            return facts
        facts.swap_total = int(swap.total)
        facts.swap_used = int(swap.used)
        facts.swap_free = int(swap.free)
        facts.swap_percent = float(swap.percent)
        facts.swap_in = int(swap.sin)
        facts.swap_out = int(swap.sout)
        return facts
