"""The collectors that ship with the agent, in the order their statuses are listed."""

from __future__ import annotations

from agent.collect.builtin.clock import ClockCollector
from agent.collect.builtin.cpu import CpuCollector
from agent.collect.builtin.crashes import CoredumpsCollector, CrashFilesCollector, KernelCrashesCollector
from agent.collect.builtin.disks import DisksCollector
from agent.collect.builtin.fragmentation import FragmentationCollector
from agent.collect.builtin.host import HostCollector
from agent.collect.builtin.logs import LogsCollector
from agent.collect.builtin.memory import MemoryCollector
from agent.collect.builtin.netdepth import NetworkDepthCollector
from agent.collect.builtin.network import NetworkCollector
from agent.collect.builtin.processes import ProcessesCollector
from agent.collect.builtin.recorded import RecordedHistoryCollector
from agent.collect.builtin.services import ServicesCollector
from agent.collect.builtin.timeseries import TimeseriesCollector
from agent.collect.framework import Collector

BUILTIN_COLLECTORS: tuple[type[Collector], ...] = (
    HostCollector,
    CpuCollector,
    MemoryCollector,
    DisksCollector,
    NetworkCollector,
    NetworkDepthCollector,
    FragmentationCollector,
    ProcessesCollector,
    ServicesCollector,
    ClockCollector,
    LogsCollector,
    TimeseriesCollector,
    RecordedHistoryCollector,
    CoredumpsCollector,
    KernelCrashesCollector,
    CrashFilesCollector,
)

__all__ = [
    "BUILTIN_COLLECTORS",
    "ClockCollector",
    "CoredumpsCollector",
    "CpuCollector",
    "CrashFilesCollector",
    "DisksCollector",
    "FragmentationCollector",
    "HostCollector",
    "KernelCrashesCollector",
    "LogsCollector",
    "MemoryCollector",
    "NetworkCollector",
    "NetworkDepthCollector",
    "ProcessesCollector",
    "RecordedHistoryCollector",
    "ServicesCollector",
    "TimeseriesCollector",
]
