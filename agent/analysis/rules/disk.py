"""Storage rules: filesystems filling up, heavy fragmentation, and the ReFS pattern."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.analysis.findings import Rule
from agent.analysis.model import Evidence, Finding, Severity

if TYPE_CHECKING:
    from agent.analysis.view import BundleView
    from protos import facts_pb2

__all__ = ["FilesystemFull", "FragmentationWithLoad", "HeavyFragmentation", "fragmentation_level"]

# Pseudo and read-only-by-design filesystems are always "full"; never warn about them.
_IGNORED_FS = frozenset({"squashfs", "iso9660", "udf", "tmpfs", "devtmpfs", "proc", "sysfs", "overlay", "ramfs"})


class FilesystemFull(Rule):
    code = "disk-full"
    title = "Filesystem nearly full"
    description = "A filesystem's space or inodes are nearly used up."
    options = MappingProxyType({"warn_pct": 90.0, "crit_pct": 97.0, "inode_warn_pct": 90.0, "inode_crit_pct": 97.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        for i, p in enumerate(view.snapshot.disks.partitions):
            if p.error or p.fstype in _IGNORED_FS or p.total == 0:
                continue
            base = f"disks.partitions[{i}]"
            inode_pct = 100.0 * p.inodes_used / p.inodes_total if p.inodes_total else 0.0
            for what, pct, warn, crit, field in (
                ("space", p.percent, self.opt("warn_pct"), self.opt("crit_pct"), "percent"),
                ("inodes", inode_pct, self.opt("inode_warn_pct"), self.opt("inode_crit_pct"), "inodes_used"),
            ):
                if pct < warn:
                    continue
                severity: Severity = "critical" if pct >= crit else "warning"
                free = f"{p.free / 1024**3:.1f} GiB free" if what == "space" else f"{p.inodes_free:,} inodes free"
                yield self.finding(
                    severity,
                    f"{p.mountpoint} is {pct:.0f}% full ({what})",
                    f"The {p.fstype or 'unknown'} filesystem on {p.device or '?'} mounted at {p.mountpoint} has "
                    f"used {pct:.1f}% of its {what} ({free}). Writes fail when it reaches 100%, which breaks "
                    "logging, databases and package updates in ways that look unrelated.",
                    [
                        Evidence(f"{base}.mountpoint", p.mountpoint),
                        Evidence(f"{base}.{field}", round(pct, 1) if field == "percent" else p.inodes_used),
                        *([Evidence(f"{base}.inodes_total", p.inodes_total)] if what == "inodes" else []),
                    ],
                    "Find what grew (du -xh --max-depth=2, or find -xdev -size +1G); rotate logs, clean caches, "
                    "or extend the filesystem."
                    if what == "space"
                    else "Find directories with many small files "
                    "(find -xdev -type f | cut -d/ -f2-3 | sort | uniq -c).",
                    subject=f"{p.mountpoint}:{what}",
                )


def fragmentation_level(fs: facts_pb2.FsFragmentation, min_files: float) -> float:
    """A single 0-100 figure: the worst of %files fragmented, %bytes in fragmented files, vendor %.

    "Fragmented" is the collector's definition (``FsFragmentation`` in facts.proto): more
    fragments than ideal and under 1 MiB per fragment on average, so a large file in a
    few big pieces does not count; both shares describe the filesystem, not the largest
    files the sample adds on purpose. Windows figures are the defragmentation engine's.
    """
    level = fs.vendor_fragmented_pct
    if fs.files_sampled >= min_files:
        level = max(level, fs.pct_files_fragmented, fs.pct_bytes_in_fragmented)
    return level


def _frag_evidence(i: int, fs: facts_pb2.FsFragmentation) -> list[Evidence]:
    base = f"fragmentation.filesystems[{i}]"
    out = [
        Evidence(f"{base}.mountpoint", fs.mountpoint),
        Evidence(f"{base}.files_sampled", fs.files_sampled),
        Evidence(f"{base}.pct_files_fragmented", round(fs.pct_files_fragmented, 1)),
        Evidence(f"{base}.pct_bytes_in_fragmented", round(fs.pct_bytes_in_fragmented, 1)),
        Evidence(f"{base}.fragments_p95", round(fs.fragments_p95, 1)),
    ]
    if fs.vendor_fragmented_pct:
        out.append(Evidence(f"{base}.vendor_fragmented_pct", round(fs.vendor_fragmented_pct, 1)))
    return out


class HeavyFragmentation(Rule):
    code = "fragmentation-heavy"
    title = "Heavy fragmentation"
    description = (
        "Many sampled files (or most of the bytes) are fragmented: more pieces than ideal, under 1 MiB "
        "each on average. Also when the typical file is in very many pieces, or free space is split up."
    )
    # p95_fragments counts only with at least p95_min_fragmented_pct of files fragmented:
    # otherwise the many pieces are large files in large extents (a 20 GiB image is 160
    # ideal 128 MiB extents), which read as fast as they can.
    options = MappingProxyType(
        {
            "warn_pct": 30.0,
            "crit_pct": 60.0,
            "p95_fragments": 50.0,
            "p95_min_fragmented_pct": 5.0,
            "min_files": 20.0,
            "free_small_pct": 70.0,
        }
    )

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        for i, fs in enumerate(view.snapshot.fragmentation.filesystems):
            level = fragmentation_level(fs, self.opt("min_files"))
            many_pieces = (
                fs.files_sampled >= self.opt("min_files")
                and fs.fragments_p95 >= self.opt("p95_fragments")
                and fs.pct_files_fragmented >= self.opt("p95_min_fragmented_pct")
            )
            free = fs.free_space
            free_split = free.available and free.pct_free_in_small_extents >= self.opt("free_small_pct")
            if level < self.opt("warn_pct") and not many_pieces and not free_split:
                continue
            severity: Severity = "critical" if level >= self.opt("crit_pct") else "warning"
            evidence = _frag_evidence(i, fs)
            if free_split:
                evidence.append(
                    Evidence(
                        f"fragmentation.filesystems[{i}].free_space.pct_free_in_small_extents",
                        round(free.pct_free_in_small_extents, 1),
                    )
                )
            yield self.finding(
                severity,
                f"{fs.mountpoint} is heavily fragmented ({level:.0f}%)",
                f"On {fs.mountpoint} ({fs.fstype}), {fs.pct_files_fragmented:.0f}% of the files are fragmented "
                f"(more pieces than ideal, under 1 MiB each on average), holding an estimated "
                f"{fs.pct_bytes_in_fragmented:.0f}% of the bytes (from {fs.files_sampled} sampled files); the "
                f"95th percentile file has {fs.fragments_p95:.0f} fragments. Sequential reads of those files "
                "turn into random I/O, and the filesystem spends CPU walking extent trees.",
                evidence,
                "Defragment the worst files or the volume in a quiet window (e4defrag, xfs_fsr, "
                "Optimize-Volume); keep more free space so new writes stay contiguous.",
                subject=fs.mountpoint,
            )


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


class FragmentationWithLoad(Rule):
    code = "fragmentation-kernel-load"
    title = "Fragmentation together with high kernel CPU or memory"
    description = (
        "A fragmented filesystem while kernel (system) CPU time or memory use is high: the ReFS pattern, "
        "where metadata work on a fragmented volume eats CPU and RAM. Kernel CPU is the host's minus the "
        "agent's own (its collection walks the disk); bundles that do not record the agent's share are "
        "judged on memory only."
    )
    options = MappingProxyType(
        {"frag_pct": 15.0, "sys_cpu_pct": 25.0, "sys_cpu_crit_pct": 40.0, "mem_pct": 90.0, "min_files": 20.0}
    )

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        s = view.snapshot
        samples = list(s.timeseries.samples)
        mem = _mean([x.mem_percent for x in samples]) if samples else s.memory.percent
        load: list[Evidence] = []
        other = 0.0  # kernel CPU not spent by the agent, % of all CPUs; 0 when it cannot be told apart
        cpu_text = "kernel CPU could not be told apart from the agent's own collection work, so it was not used"
        if samples and s.timeseries.agent_cpu_known:
            host = _mean([x.cpu_system_percent for x in samples])
            own = _mean([x.agent_cpu_system_percent for x in samples])
            other = max(0.0, host - own)
            cpu_text = (
                f"the kernel used {other:.0f}% of all CPUs for work other than this collection "
                f"({host:.0f}% in all, {own:.0f}% of it the agent's own)"
            )
            if other >= self.opt("sys_cpu_pct"):
                load += [
                    Evidence("timeseries.samples[*].cpu_system_percent (mean)", round(host, 1)),
                    Evidence("timeseries.samples[*].agent_cpu_system_percent (mean)", round(own, 1)),
                ]
        mem_high = mem >= self.opt("mem_pct")
        if mem_high:
            load.append(
                Evidence("timeseries.samples[*].mem_percent (mean)" if samples else "memory.percent", round(mem, 1))
            )
        if not load:
            return
        severity: Severity = "critical" if other >= self.opt("sys_cpu_crit_pct") else "warning"
        high = [f"kernel CPU is {other:.0f}% besides the agent"] if other >= self.opt("sys_cpu_pct") else []
        high += [f"memory is {mem:.0f}%"] if mem_high else []
        for i, fs in enumerate(s.fragmentation.filesystems):
            level = fragmentation_level(fs, self.opt("min_files"))
            if level < self.opt("frag_pct"):
                continue
            yield self.finding(
                severity,
                f"{fs.mountpoint} fragmented ({level:.0f}%) while {' and '.join(high)}",
                f"{fs.mountpoint} ({fs.fstype or 'unknown fs'}) is {level:.0f}% fragmented and, over the collection "
                f"window, {cpu_text}; memory stood at {mem:.0f}%. On ReFS and other copy-on-write filesystems, "
                "metadata work on a fragmented volume shows up as kernel CPU and memory (metadata cache), not as "
                "user processes — the machine is slow with no culprit in top.",
                [*load, *_frag_evidence(i, fs)],
                "Confirm with a per-driver CPU profile (xperf/WPR on Windows, perf top on Linux); defragment "
                "or move hot data off the volume, and check the filesystem driver's known issues for this build.",
                subject=fs.mountpoint,
            )
