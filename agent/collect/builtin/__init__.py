"""The collectors that ship with the agent, in the order their statuses are listed."""

from __future__ import annotations

from agent.collect.builtin.cpu import CpuCollector
from agent.collect.builtin.disks import DisksCollector
from agent.collect.builtin.host import HostCollector
from agent.collect.builtin.memory import MemoryCollector
from agent.collect.builtin.network import NetworkCollector
from agent.collect.framework import Collector

BUILTIN_COLLECTORS: tuple[type[Collector], ...] = (
    HostCollector,
    CpuCollector,
    MemoryCollector,
    DisksCollector,
    NetworkCollector,
)

__all__ = [
    "BUILTIN_COLLECTORS",
    "CpuCollector",
    "DisksCollector",
    "HostCollector",
    "MemoryCollector",
    "NetworkCollector",
]
