"""The built-in rules, in the order reports list them when severities tie."""

from __future__ import annotations

from agent.analysis.rule import Rule
from agent.analysis.rules.compute import CpuSaturation, MemoryPressure, RunawayProcess, RunQueue, SwapActivity
from agent.analysis.rules.disk import FilesystemFull
from agent.analysis.rules.fragmentation import FragmentationWithLoad, FreeSpaceFragmentation, HeavyFragmentation
from agent.analysis.rules.network import CollectorReachability, DnsResolution, NicErrors, TcpRetransmissions
from agent.analysis.rules.ops import (
    ClockSkew,
    CollectionIncomplete,
    FailedServices,
    LogErrorBurst,
    OomKills,
    RecentReboot,
)
from agent.analysis.rules.recorded import RecordedCpuSaturation, RecordedGrowth
from agent.analysis.rules.refs import ReFSEvents
from agent.analysis.rules.specs import SpecRules

__all__ = [
    "BUILTIN_RULES",
    "ClockSkew",
    "CollectionIncomplete",
    "CollectorReachability",
    "CpuSaturation",
    "DnsResolution",
    "FailedServices",
    "FilesystemFull",
    "FragmentationWithLoad",
    "FreeSpaceFragmentation",
    "HeavyFragmentation",
    "LogErrorBurst",
    "MemoryPressure",
    "NicErrors",
    "OomKills",
    "ReFSEvents",
    "RecentReboot",
    "RecordedCpuSaturation",
    "RecordedGrowth",
    "RunQueue",
    "RunawayProcess",
    "SpecRules",
    "SwapActivity",
    "TcpRetransmissions",
]

BUILTIN_RULES: tuple[type[Rule], ...] = (
    FilesystemFull,
    HeavyFragmentation,
    FreeSpaceFragmentation,
    FragmentationWithLoad,
    ReFSEvents,
    MemoryPressure,
    SwapActivity,
    CpuSaturation,
    RecordedCpuSaturation,
    RecordedGrowth,
    RunQueue,
    RunawayProcess,
    NicErrors,
    TcpRetransmissions,
    DnsResolution,
    CollectorReachability,
    ClockSkew,
    FailedServices,
    LogErrorBurst,
    RecentReboot,
    OomKills,
    CollectionIncomplete,
    SpecRules,
)
