"""macOS: APFS facts that matter instead of fragmentation (type, SSD, local snapshots).

APFS is copy-on-write and almost always on SSD; Apple ships no defragmenter and
extent counts say nothing actionable there. What does matter on a full or slow Mac
is the medium and the local Time Machine snapshots that pin free space.
"""

from __future__ import annotations

import plistlib
from dataclasses import dataclass

from protos import facts_pb2

APFS_REASON = (
    "fragmentation is not meaningful on APFS: copy-on-write, usually on SSD, and macOS ships "
    "no defragmenter; reported instead: medium and local snapshots"
)


class MacParseError(ValueError):
    """Output that is not what diskutil or tmutil print."""


@dataclass(frozen=True)
class DiskInfo:
    fstype: str  # "apfs", "hfs", ...
    device: str
    mountpoint: str
    solid_state: bool | None


def parse_diskutil_info(raw: bytes) -> DiskInfo:
    """``diskutil info -plist /`` → the few fields we use."""
    try:
        data = plistlib.loads(raw)
    except (plistlib.InvalidFileException, ValueError) as exc:
        raise MacParseError(f"diskutil info output is not a plist: {exc}") from None
    if not isinstance(data, dict):
        raise MacParseError("diskutil info plist is not a dictionary")
    ssd = data.get("SolidState")
    fstype = data.get("FilesystemType") or data.get("FilesystemName") or ""
    return DiskInfo(
        fstype=str(fstype).lower(),
        device=str(data.get("DeviceNode") or data.get("DeviceIdentifier") or ""),
        mountpoint=str(data.get("MountPoint") or ""),
        solid_state=ssd if isinstance(ssd, bool) else None,
    )


def parse_local_snapshots(text: str) -> int:
    """Count snapshots in ``tmutil listlocalsnapshots /`` (with or without its header line)."""
    return sum(1 for line in text.splitlines() if line.strip().startswith("com.apple."))


def apfs_facts(info: DiskInfo, snapshots: int | None) -> facts_pb2.FsFragmentation:
    out = facts_pb2.FsFragmentation(
        mountpoint=info.mountpoint or "/",
        device=info.device,
        fstype=info.fstype,
        method="diskutil",
    )
    if info.solid_state is not None:
        out.media = "ssd" if info.solid_state else "rotational"
    notes = [APFS_REASON if info.fstype == "apfs" else f"{info.fstype or 'this filesystem'}: not sampled on macOS"]
    if snapshots is None:
        notes.append("local snapshot count unknown")
    else:
        out.local_snapshots = snapshots
    out.note = "; ".join(notes)
    out.free_space.CopyFrom(
        facts_pb2.FreeSpaceFragmentation(available=False, reason="no free-space map interface on macOS")
    )
    return out
