"""Storage rules: filesystems filling up (fragmentation has its own module, ``fragmentation``)."""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.analysis.model import Evidence, Finding, Severity
from agent.analysis.rule import Rule
from agent.analysis.rules.fragmentation import FragmentationWithLoad, HeavyFragmentation, fragmentation_level

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

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
