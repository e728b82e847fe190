"""Fragmentation rules: fragmented files, fragmented free space, and fragmentation under kernel load.

What the collector measured is in facts.proto (``FsFragmentation``); what counts as a
fragmented file is its definition (``agent/collect/fragfigures.py``), which it applies to
each of the worst files (``FragmentedFile.fragmented``). How a filesystem is judged:

* **From one file.** A filesystem holding five files is judged as surely as one holding
  a million: when the walk saw the whole filesystem, the byte share needs no minimum
  sample, and a worst file is a fact about that file. The share of *files* fragmented
  waits for ``min_files`` files, and so does the byte share of a walk cut short by the
  budget: one file in a sample of three makes 33 % of nothing in particular.
* **By bytes.** What hurts is the data that reads slowly, so the estimated share of the
  data in fragmented files, and the size of the worst fragmented file, set the severity:
  one 2 TiB file in 50,000 extents weighs more than a thousand small files in pieces.
  The share of files fragmented can raise a warning, never a critical finding.
* **Naming the files.** The finding lists the worst fragmented files (path, size,
  extents, average extent size) and, on Linux, the processes that had them open.
* Free-space fragmentation is a finding of its own (where new files will be fragmented);
  from a map cut by its time bound, only by the share of all free space it proves.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.analysis.model import Evidence, Finding, Severity
from agent.analysis.rule import Rule

if TYPE_CHECKING:
    from agent.analysis.view import BundleView
    from protos import facts_pb2

__all__ = [
    "FragmentationWithLoad",
    "FreeSpaceFragmentation",
    "HeavyFragmentation",
    "WorstFile",
    "bytes_judged",
    "fragmentation_level",
    "fragmented_files",
]

GIB = 1 << 30


def bytes_judged(fs: facts_pb2.FsFragmentation, min_files: float) -> bool:
    """Whether the byte share can be judged: the walk saw the whole filesystem (however few files
    it holds, the sample covers them), or ``min_files`` files were mapped. A walk cut short by
    the budget on a busy machine may have mapped three files of a million: no estimate."""
    return fs.files_sampled > 0 and (fs.walk_complete or fs.files_sampled >= min_files)


def fragmentation_level(fs: facts_pb2.FsFragmentation, min_files: float) -> float:
    """A single 0-100 figure: the worst of the vendor's %, % of bytes in fragmented files (when
    ``bytes_judged``) and % of files fragmented (from ``min_files`` sampled files on)."""
    level = fs.vendor_fragmented_pct
    if bytes_judged(fs, min_files):
        level = max(level, fs.pct_bytes_in_fragmented)
    if fs.files_sampled >= min_files:
        level = max(level, fs.pct_files_fragmented)
    return level


@dataclass(frozen=True)
class WorstFile:
    """One of a filesystem's worst files that the collector found fragmented."""

    index: int  # in ``FsFragmentation.worst``
    path: str
    size: int
    fragments: int
    avg_extent: float  # bytes per extent
    readers: tuple[str, ...]  # "name (pid N)"

    def describe(self) -> str:
        text = f"{self.path} ({size_text(self.size)} in {self.fragments:,} extents of {size_text(self.avg_extent)})"
        return text + (f", open in {', '.join(self.readers)}" if self.readers else "")


def fragmented_files(fs: facts_pb2.FsFragmentation) -> list[WorstFile]:
    """The worst files marked fragmented, most extents first (older agents marked none)."""
    out = []
    for j, w in enumerate(fs.worst):
        if not w.fragmented or not w.fragments:
            continue
        data = w.mapped_bytes or w.size
        readers = tuple(f"{u.name or '?'} (pid {u.pid})" for u in w.open_by)
        out.append(WorstFile(j, w.path, w.size, w.fragments, data / w.fragments, readers))
    return sorted(out, key=lambda w: (w.fragments, w.size), reverse=True)


def size_text(n: float) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _label(mountpoint: str) -> str:
    """The mount point opening a title: "/backup:", but "E:" as it is (not "E::")."""
    return mountpoint if mountpoint.endswith(":") else f"{mountpoint}:"


def _fs_evidence(i: int, fs: facts_pb2.FsFragmentation) -> list[Evidence]:
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


def _file_evidence(i: int, files: list[WorstFile], limit: int = 3) -> list[Evidence]:
    out = []
    for w in files[:limit]:
        base = f"fragmentation.filesystems[{i}].worst[{w.index}]"
        out += [Evidence(f"{base}.path", w.path), Evidence(f"{base}.size", w.size),
                Evidence(f"{base}.fragments", w.fragments)]
        if w.readers:
            out.append(Evidence(f"{base}.open_by", ", ".join(w.readers)))
    return out


def _worst_text(files: list[WorstFile], limit: int = 3) -> str:
    if not files:
        return ""
    more = f" and {len(files) - limit} more" if len(files) > limit else ""
    return f" The worst fragmented files: {'; '.join(w.describe() for w in files[:limit])}{more}."


class HeavyFragmentation(Rule):
    code = "fragmentation-heavy"
    title = "Heavy fragmentation"
    description = (
        "Fragmented files (more pieces than ideal, under 1 MiB each on average, or 10,000 pieces and more) "
        "hold much of a filesystem's data, or a large file is fragmented; judged by bytes, from one file on."
    )
    # p95_fragments counts only with at least p95_min_fragmented_pct of files fragmented:
    # otherwise the many pieces are large files in large extents (a 20 GiB image is 160
    # ideal 128 MiB extents), which read as fast as they can.
    options = MappingProxyType(
        {
            "warn_pct": 30.0,
            "crit_pct": 60.0,
            "large_file_bytes": float(GIB),
            "crit_file_bytes": 100.0 * GIB,
            "p95_fragments": 50.0,
            "p95_min_fragmented_pct": 5.0,
            "min_files": 20.0,
        }
    )

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        for i, fs in enumerate(view.snapshot.fragmentation.filesystems):
            finding = self._judge(i, fs)
            if finding is not None:
                yield finding

    def _judge(self, i: int, fs: facts_pb2.FsFragmentation) -> Finding | None:
        warn, crit = self.opt("warn_pct"), self.opt("crit_pct")
        enough_files = fs.files_sampled >= self.opt("min_files")
        by_bytes = fs.pct_bytes_in_fragmented if bytes_judged(fs, self.opt("min_files")) else 0.0
        by_files = fs.pct_files_fragmented if enough_files else 0.0
        vendor = fs.vendor_fragmented_pct
        files = fragmented_files(fs)
        large = [w for w in files if w.size >= self.opt("large_file_bytes")]
        many_pieces = (
            enough_files
            and fs.fragments_p95 >= self.opt("p95_fragments")
            and fs.pct_files_fragmented >= self.opt("p95_min_fragmented_pct")
        )
        if max(by_bytes, vendor, by_files) < warn and not large and not many_pieces:
            return None
        critical = max(by_bytes, vendor) >= crit or any(w.size >= self.opt("crit_file_bytes") for w in files)
        severity: Severity = "critical" if critical else "warning"
        if by_bytes >= warn:
            head = f"fragmented files hold {by_bytes:.0f}% of the data"
        elif vendor >= warn:
            head = f"{vendor:.0f}% fragmented by the Windows analysis"
        elif by_files >= warn:
            head = f"{by_files:.0f}% of the files are fragmented"
        elif large:
            head = f"{large[0].path} ({size_text(large[0].size)}) is in {large[0].fragments:,} extents"
        else:
            head = f"the 95th-percentile file is in {fs.fragments_p95:.0f} pieces"
        tail = f"; worst {files[0].path} in {files[0].fragments:,} extents" if files and not head.startswith(
            files[0].path) else ""
        return self.finding(
            severity,
            f"{_label(fs.mountpoint)} {head}{tail}",
            self._explain(fs, by_bytes, enough_files) + _worst_text(files),
            [*_fs_evidence(i, fs), *_file_evidence(i, files)],
            "Defragment the worst files in a quiet window (e4defrag FILE, xfs_fsr FILE, Optimize-Volume or "
            "copying the file on a volume with free space in large pieces); keep more free space so new "
            "writes stay contiguous.",
            subject=fs.mountpoint,
        )

    def _explain(self, fs: facts_pb2.FsFragmentation, by_bytes: float, enough_files: bool) -> str:
        where = f"On {fs.mountpoint} ({fs.fstype or 'unknown fs'}),"
        if fs.method.startswith(("wmi", "defrag")):
            text = (f"{where} the Windows defragmentation engine rates the volume {fs.vendor_fragmented_pct:.0f}% "
                    f"fragmented; {fs.files_fragmented:,} of {fs.files_sampled:,} files are fragmented.")
        else:
            files = (f"{fs.pct_files_fragmented:.0f}% of the files are fragmented"
                     if enough_files else f"with {fs.files_sampled} files sampled the share of files is not judged")
            share = (f"hold an estimated {by_bytes:.0f}% of the data in the {fs.files_sampled} files sampled"
                     if bytes_judged(fs, self.opt("min_files")) else
                     f"were looked for in {fs.files_sampled} files, too few of a walk cut short by its budget to "
                     "estimate their share of the data")
            text = (f"{where} fragmented files (more pieces than ideal and under 1 MiB each on average, or 10,000 "
                    f"pieces and more) {share}; {files}; the 95th percentile file has {fs.fragments_p95:.0f} "
                    "fragments.")
        return (text + " Reading a fragmented file turns sequential I/O into random I/O, and the filesystem "
                "spends CPU and memory on its extent map.")


class FreeSpaceFragmentation(Rule):
    code = "fragmentation-free-space"
    title = "Free space fragmented"
    description = (
        "Most of a filesystem's free space is in small pieces (under 1 MiB; Windows: its free-space "
        "fragmentation figure), so files written from now on come out fragmented."
    )
    options = MappingProxyType({"warn_pct": 70.0, "crit_pct": 90.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        for i, fs in enumerate(view.snapshot.fragmentation.filesystems):
            free = fs.free_space
            if free.partial:
                yield from self._partial(i, fs)
                continue
            level = max(free.pct_free_in_small_extents, free.vendor_fragmented_pct)
            if not free.available or level < self.opt("warn_pct"):
                continue
            base = f"fragmentation.filesystems[{i}].free_space"
            if free.pct_free_in_small_extents >= free.vendor_fragmented_pct:
                head = f"{free.pct_free_in_small_extents:.0f}% of the free space is in pieces under 1 MiB"
                fact = Evidence(f"{base}.pct_free_in_small_extents", round(free.pct_free_in_small_extents, 1))
            else:
                head = f"free space {free.vendor_fragmented_pct:.0f}% fragmented by the Windows analysis"
                fact = Evidence(f"{base}.vendor_fragmented_pct", round(free.vendor_fragmented_pct, 1))
            yield self.finding(
                "critical" if level >= self.opt("crit_pct") else "warning",
                f"{_label(fs.mountpoint)} {head}",
                f"On {fs.mountpoint} ({fs.fstype or 'unknown fs'}), {head}: {free.free_extents:,} free extents "
                f"of {size_text(free.avg_free_extent_bytes)} on average, the largest "
                f"{size_text(free.largest_free_extent_bytes)}. Files written or grown from now on are laid out in "
                "these pieces, so they come out fragmented however healthy the present files are.",
                [Evidence(f"fragmentation.filesystems[{i}].mountpoint", fs.mountpoint), fact,
                 Evidence(f"{base}.free_extents", free.free_extents),
                 Evidence(f"{base}.largest_free_extent_bytes", free.largest_free_extent_bytes)],
                "Free space (delete or move data off the volume), then defragment the files that grow "
                "(xfs_fsr, e4defrag, Optimize-Volume -Defrag also consolidates free space on NTFS).",
                subject=f"{fs.mountpoint}:free",
            )

    def _partial(self, i: int, fs: facts_pb2.FsFragmentation) -> Iterator[Finding]:
        """A map cut by its bound, judged by the share of *all* free space (statfs) its small pieces prove."""
        free = fs.free_space
        level = 100.0 * free.small_free_bytes / free.fs_free_bytes if free.fs_free_bytes else 0.0
        if not free.available or level < self.opt("warn_pct"):
            return
        base = f"fragmentation.filesystems[{i}].free_space"
        head = f"at least {level:.0f}% of the free space is in pieces under 1 MiB"
        yield self.finding(
            "critical" if level >= self.opt("crit_pct") else "warning",
            f"{_label(fs.mountpoint)} {head} (free-space map partial)",
            f"On {fs.mountpoint} ({fs.fstype or 'unknown fs'}), {head}: the free-space map was read over "
            f"{free.covered_pct:.0f}% of the filesystem within its bound, and the {size_text(free.small_free_bytes)}"
            f" in small pieces found there are {level:.0f}% of all {size_text(free.fs_free_bytes)} free, whatever the "
            "rest holds. Files written or grown from now on are laid out in these pieces, so they come out fragmented.",
            [Evidence(f"fragmentation.filesystems[{i}].mountpoint", fs.mountpoint)]
            + [Evidence(f"{base}.{k}", getattr(free, k)) for k in ("covered_pct", "small_free_bytes", "fs_free_bytes")],
            "Free space (delete or move data off the volume), then defragment the files that grow "
            "(xfs_fsr, e4defrag). Collect with a larger frag_free_budget_s to read the whole map.",
            subject=f"{fs.mountpoint}:free",
        )


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


@dataclass(frozen=True)
class _Load:
    other: float  # kernel CPU besides the agent, % of all CPUs; 0 when it cannot be told apart
    cpu_text: str
    iowait: float
    mem: float
    evidence: tuple[Evidence, ...]


class FragmentationWithLoad(Rule):
    code = "fragmentation-kernel-load"
    title = "Fragmentation together with high kernel CPU, I/O wait or memory"
    description = (
        "A fragmented filesystem while kernel (system) CPU time or memory use is high, or a fragmented file "
        "is open in a process while the CPUs wait on I/O: the ReFS pattern, where metadata work on a fragmented "
        "volume eats CPU and RAM. Kernel CPU is the host's minus the agent's own (its collection walks the "
        "disk); bundles that do not record the agent's share are judged on memory and I/O wait."
    )
    options = MappingProxyType(
        {
            "frag_pct": 15.0,
            "large_file_bytes": float(GIB),
            "sys_cpu_pct": 25.0,
            "sys_cpu_crit_pct": 40.0,
            "iowait_pct": 20.0,
            "iowait_crit_pct": 40.0,
            "mem_pct": 90.0,
            "min_files": 20.0,
        }
    )

    def _load(self, s: facts_pb2.Snapshot) -> _Load:
        samples = list(s.timeseries.samples)
        mem = _mean([x.mem_percent for x in samples]) if samples else s.memory.percent
        evidence: list[Evidence] = []
        other = 0.0
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
                evidence += [
                    Evidence("timeseries.samples[*].cpu_system_percent (mean)", round(host, 1)),
                    Evidence("timeseries.samples[*].agent_cpu_system_percent (mean)", round(own, 1)),
                ]
        iowait = _mean([x.cpu_iowait_percent for x in samples])
        if mem >= self.opt("mem_pct"):
            evidence.append(
                Evidence("timeseries.samples[*].mem_percent (mean)" if samples else "memory.percent", round(mem, 1))
            )
        return _Load(other, cpu_text, iowait, mem, tuple(evidence))

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        s = view.snapshot
        load = self._load(s)
        cpu_high = load.other >= self.opt("sys_cpu_pct")
        mem_high = load.mem >= self.opt("mem_pct")
        for i, fs in enumerate(s.fragmentation.filesystems):
            level = fragmentation_level(fs, self.opt("min_files"))
            files = fragmented_files(fs)
            large = [w for w in files if w.size >= self.opt("large_file_bytes")]
            heavy = level >= self.opt("frag_pct")
            if not heavy and not large:
                continue
            # A small fragmented file held open (a daemon's log) is everywhere and costs nothing:
            # a reader counts when the file is large or the filesystem as a whole is fragmented.
            read = [w for w in files if w.readers and (heavy or w.size >= self.opt("large_file_bytes"))]
            # I/O wait belongs to no process: it counts only when a process had a fragmented
            # file of this filesystem open (the agent's own walk waits on the disk too).
            iowait_high = bool(read) and load.iowait >= self.opt("iowait_pct")
            if not (cpu_high or mem_high or iowait_high):
                continue
            high = [f"kernel CPU is {load.other:.0f}% besides the agent"] if cpu_high else []
            high += [f"I/O wait is {load.iowait:.0f}%"] if iowait_high else []
            high += [f"memory is {load.mem:.0f}%"] if mem_high else []
            critical = load.other >= self.opt("sys_cpu_crit_pct") or (
                iowait_high and load.iowait >= self.opt("iowait_crit_pct"))
            worst = read[0] if read else (files[0] if files else None)
            what = (f"{worst.path} in {worst.fragments:,} extents" + (f" read by {worst.readers[0]}" if read else "")
                    if worst else f"{level:.0f}% fragmented")
            evidence = list(load.evidence)
            if iowait_high:
                evidence.append(Evidence("timeseries.samples[*].cpu_iowait_percent (mean)", round(load.iowait, 1)))
            shown = read + [w for w in files if not w.readers]
            yield self.finding(
                "critical" if critical else "warning",
                f"{_label(fs.mountpoint)} {what} while {' and '.join(high)}",
                f"{fs.mountpoint} ({fs.fstype or 'unknown fs'}) "
                + (f"is {level:.0f}% fragmented (the share of its data in fragmented files, or the vendor's figure)"
                   if heavy else "holds a large fragmented file")
                + f" and, over the collection window, {load.cpu_text}; "
                f"the CPUs waited on I/O {load.iowait:.0f}% of the time and memory stood at {load.mem:.0f}%."
                f"{_worst_text(shown)} On ReFS and other copy-on-write filesystems, and for any file read in "
                "many small pieces, the extent lookups and the I/O they split into show up as kernel CPU, "
                "I/O wait and memory (metadata cache), not as user processes: the machine is slow with no "
                "culprit in top.",
                [*evidence, *_fs_evidence(i, fs), *_file_evidence(i, shown)],
                "Confirm with a per-driver CPU profile (xperf/WPR on Windows, perf top on Linux); defragment "
                "or move the files named here off the volume, and check the filesystem driver's known issues "
                "for this build.",
                subject=fs.mountpoint,
            )
