"""Fragmentation: sampled extent counts per filesystem, free-space fragmentation where possible.

Linux samples each real filesystem with FIEMAP (``fragmentation_linux``); Windows asks
the defragmentation engine (WMI, else ``defrag /A /V``); macOS reports the APFS facts
that matter instead, with the reason. Options:

* ``frag_max_files`` (default 4000): files mapped per filesystem;
* ``frag_budget_s`` (default 0.4 s; raise it for a deeper scan): time for all filesystems together, shared fairly;
* ``frag_free_budget_s`` (default 0.5 s): time for reading one filesystem's free-space map
  (GETFSMAP), beside its sample; a map cut by it is reported as partial, with how much it covered;
* ``frag_min_bytes`` (default 64 KiB): smaller files are not sampled;
* ``frag_mountpoints``: comma-separated mount points to restrict the run to;
* ``frag_seed``: fixes the random walk order (tests, reproducing a case);
* ``frag_walker`` (default ``child``): ``thread`` samples in the collector's own thread
  instead of a child interpreter (the fallback anyway when none can be started).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import psutil

from agent.collect.builtin import fragmentation_linux as lin
from agent.collect.command import CommandNotFound, run_command
from agent.collect.framework import CollectContext, Collector, Pending, current_platform
from agent.collect.freespace import DEFAULT_FREE_BUDGET_S
from agent.collect.options import FloatOption, IntOption, StrOption
from agent.errors import CollectionError
from protos import facts_pb2

_NETWORK_PREFIXES = ("nfs", "cifs", "smb", "fuse", "9p", "ceph", "glusterfs")
_COMMAND_MAX_BYTES = 1 << 20
_SAFETY_S = 0.5  # left of the collector budget for assembling the answer
# 0.4 s: the sampler's own process walks about twice as fast as it did in a collector
# thread, so 0.4 s samples more than 0.5 s used to (one-shot collect on a 2-core VM,
# medians: 3,116 files mapped of 52k entries walked, against 2,383 of 45k at 0.5 s
# in-thread). Raise it for a deeper scan.
DEFAULT_BUDGET_S = 0.4
# At most, for finding who holds the fragmented files open: ~3 ms for 160 processes on an
# idle machine, but a loaded one starves the thread, and new processes come last.
_OPEN_BY_S = 1.0


class Part(Protocol):
    """What we read of a psutil ``sdiskpart``."""

    @property
    def device(self) -> str: ...
    @property
    def mountpoint(self) -> str: ...
    @property
    def fstype(self) -> str: ...


@dataclass(frozen=True)
class Target:
    mountpoint: str
    device: str
    fstype: str
    not_sampled: str = ""  # reason, when listed but not walked
    note: str = ""


def linux_targets(parts: Sequence[Part], all_parts: Sequence[Part]) -> list[Target]:
    """Real filesystems to sample, one per device; network/ZFS ones listed with a reason."""
    targets: dict[int | str, Target] = {}
    for p in parts:
        fstype = p.fstype
        if fstype.startswith(_NETWORK_PREFIXES):
            targets[p.mountpoint] = Target(p.mountpoint, p.device, fstype, "network or FUSE filesystem: not walked")
            continue
        if fstype == "zfs":
            reason = "ZFS has no FIEMAP; `zpool list -o name,frag` reports free-space fragmentation"
            targets[p.mountpoint] = Target(p.mountpoint, p.device, fstype, reason)
            continue
        if fstype in lin.SKIP_FSTYPES:
            continue
        key = _dev_key(p.mountpoint)
        earlier = targets.get(key)
        # Bind mounts show one device several times; the shortest path is the real root.
        if earlier is None or len(p.mountpoint) < len(earlier.mountpoint):
            targets[key] = Target(p.mountpoint, p.device, fstype)
    if not any(t.mountpoint == "/" for t in targets.values()):
        root = next((p for p in all_parts if p.mountpoint == "/" and p.fstype == "overlay"), None)
        if root is not None:  # a container: its root is all we can see
            targets["/"] = Target(
                "/",
                root.device,
                "overlay",
                note="overlay root (container): FIEMAP reports the backing filesystem's extents",
            )
    return sorted(targets.values(), key=lambda t: t.mountpoint)


def _dev_key(mountpoint: str) -> int | str:
    try:
        return os.stat(mountpoint).st_dev
    except OSError:
        return mountpoint


MAX_FILES = IntOption("frag_max_files", 4000, "files the sample maps at most", minimum=1, maximum=1_000_000)
BUDGET = FloatOption(
    "frag_budget_s", DEFAULT_BUDGET_S, "time for the file sample, seconds", minimum=0.05, maximum=3600.0
)
MIN_BYTES = IntOption(
    "frag_min_bytes",
    lin.DEFAULT_MIN_BYTES,
    "files smaller than this are not sampled (they can hardly fragment)",
    shown_default="65536 (64 KiB)",
    maximum=1 << 40,
)
FREE_BUDGET = FloatOption(
    "frag_free_budget_s",
    DEFAULT_FREE_BUDGET_S,
    "time for reading one filesystem's free-space map (GETFSMAP), beside its sample; a map cut by it is marked "
    "partial with the share of the filesystem it covered",
    minimum=0.05,
    maximum=3600.0,
)
SEED = IntOption("frag_seed", -1, "the sample's random seed; -1: a fresh one each run", minimum=-1, maximum=2**63 - 1)
MOUNTPOINTS = StrOption(
    "frag_mountpoints", "", "only these mount points, comma-separated", shown_default="all real filesystems"
)
WALKER = StrOption(
    "frag_walker",
    "child",
    "where the sample runs: child (a child interpreter) or thread (in the agent's own process)",
    choices=("child", "thread"),
)


class FragmentationCollector(Collector):
    name = "fragmentation"
    description = "File and free-space fragmentation per filesystem (sampled FIEMAP, Windows defrag analysis)"
    budget_s = 5.0
    facts_field = "fragmentation"
    facts_type = facts_pb2.FragmentationFacts
    options = (BUDGET, MAX_FILES, MIN_BYTES, MOUNTPOINTS, WALKER, FREE_BUDGET, SEED)

    def collect(self, ctx: CollectContext) -> facts_pb2.FragmentationFacts:
        platform = current_platform()
        if platform == "windows":
            return _windows(ctx)
        if platform == "darwin":
            return _macos(ctx)
        return _linux(ctx)


def _linux(ctx: CollectContext) -> facts_pb2.FragmentationFacts:
    max_files, budget, min_bytes = ctx.get(MAX_FILES), ctx.get(BUDGET), ctx.get(MIN_BYTES)
    free_budget, seed = ctx.get(FREE_BUDGET), ctx.get(SEED)
    only = [m.strip() for m in ctx.get(MOUNTPOINTS).split(",") if m.strip()]
    # The sample runs in a child interpreter unless told otherwise (fragwalk.py says why).
    in_child = ctx.get(WALKER) == "child"
    rng = random.Random(None if seed < 0 else seed)
    targets = linux_targets(psutil.disk_partitions(all=False), psutil.disk_partitions(all=True))
    if only:
        known = {t.mountpoint for t in targets}
        targets = [t for t in targets if t.mountpoint in only]
        targets += [Target(m, "", _fstype_of(m)) for m in only if m not in known and os.path.isdir(m)]
    facts = facts_pb2.FragmentationFacts()
    deadline = time.monotonic() + min(budget, max(0.0, ctx.remaining() - _SAFETY_S))
    walkable = [t for t in targets if not t.not_sampled]
    free_space: list[tuple[int, Pending[facts_pb2.FreeSpaceFragmentation]]] = []
    for t in targets:
        if ctx.cancelled.is_set():
            break  # the run was given up: start no more children
        if t.not_sampled:
            facts.filesystems.add(
                mountpoint=_text(t.mountpoint),
                device=_text(t.device),
                fstype=_text(t.fstype),
                note=_text(t.not_sampled),
            )
            continue
        left = deadline - time.monotonic()
        share = max(0.0, left / max(1, len(walkable)))
        walkable.remove(t)
        started = time.monotonic()
        # GETFSMAP (~0.1 s of kernel time on a 250 GB ext4) runs beside the sample
        # instead of before it, so the sample gets the whole share.
        free = Pending(partial(_free_space, ctx, t, free_budget, in_child=in_child), name="casefile-getfsmap")
        bounds = lin.Bounds(max_files=max_files, budget_s=share, min_bytes=min_bytes)
        # A seeded run stays reproducible, and samples the same files in a child or a thread.
        fs_seed = rng.randrange(2**63) if seed >= 0 else None
        try:
            fs = _sample(ctx, t.mountpoint, bounds, rng, in_child=in_child, seed=fs_seed)
        except (OSError, CollectionError, ValueError) as exc:  # ValueError: a fact protobuf refused
            ctx.warn(_text(f"{t.mountpoint}: not sampled: {exc}"))
            fs = facts_pb2.FsFragmentation(
                mountpoint=_text(t.mountpoint), method="fiemap", note=_text(f"not sampled: {exc}")
            )
        fs.device, fs.fstype = _text(t.device), _text(t.fstype)
        fs.budget_s = share
        fs.media = lin.media_of(t.mountpoint)
        fs.duration_s = time.monotonic() - started
        if t.note:
            fs.note = _text(f"{t.note}; {fs.note}")
        facts.filesystems.append(fs)
        # Its GETFSMAP goes on while the next filesystem is sampled: on a large root with
        # fragmented free space it takes seconds, which are not the next sample's share.
        free_space.append((len(facts.filesystems) - 1, free))
    for index, free in free_space:
        facts.filesystems[index].free_space.CopyFrom(_free_space_result(free, ctx))
    _add_open_by(ctx, facts)
    return facts


def _add_open_by(ctx: CollectContext, facts: facts_pb2.FragmentationFacts) -> None:
    """Which processes hold the fragmented worst files open (what turns fragmentation into load)."""
    files = [w for fs in facts.filesystems for w in fs.worst if w.fragmented]
    if not files or ctx.cancelled.is_set():
        return
    me = psutil.Process()
    try:
        own = {me.pid, *(c.pid for c in me.children(recursive=True))}
    except psutil.Error:
        own = {me.pid}
    deadline = time.monotonic() + min(_OPEN_BY_S, max(0.0, ctx.remaining() - _SAFETY_S))
    found, complete = lin.open_by({w.path for w in files}, own, deadline)
    for w in files:
        for pid, name in found.get(w.path, []):
            w.open_by.add(pid=pid, name=_text(name))
    if not complete:
        for fs in facts.filesystems:
            if any(w.fragmented for w in fs.worst):
                fs.note = _text(f"{fs.note}; processes holding the worst files open: not all looked at in time")


def _sample(
    ctx: CollectContext, mountpoint: str, bounds: lin.Bounds, rng: random.Random, *, in_child: bool, seed: int | None
) -> facts_pb2.FsFragmentation:
    """One filesystem's sample, in a child interpreter when one can be started."""
    if in_child:
        try:
            # Killed by the collector's own deadline at the latest, so what the other
            # filesystems gave is kept.
            timeout = max(0.5, ctx.remaining() - _SAFETY_S)
            return lin.sample_in_child(mountpoint, bounds, seed=seed, timeout=timeout, cancel=ctx.cancelled)
        except lin.ChildUnavailable as exc:
            ctx.warn(f"fragmentation sampled in-process (no child interpreter: {exc})")
    return lin.sample_filesystem(mountpoint, bounds, rng=rng if seed is None else random.Random(seed))


def _free_space(
    ctx: CollectContext, t: Target, budget_s: float, *, in_child: bool
) -> facts_pb2.FreeSpaceFragmentation:
    """Free-space facts within ``budget_s``, in a child interpreter when one can be started (freespace.py says why)."""
    if in_child:
        try:
            timeout = max(0.5, ctx.remaining() - _SAFETY_S)
            return lin.free_space_in_child(
                t.mountpoint, t.fstype, timeout=timeout, budget_s=budget_s, cancel=ctx.cancelled
            )
        except lin.ChildUnavailable:
            pass  # the sampler warns about it
        except CollectionError as exc:
            return facts_pb2.FreeSpaceFragmentation(available=False, reason=f"GETFSMAP failed: {exc}")
    return lin.free_space_facts(t.mountpoint, t.fstype, budget_s=budget_s)


def _free_space_result(
    free: Pending[facts_pb2.FreeSpaceFragmentation], ctx: CollectContext
) -> facts_pb2.FreeSpaceFragmentation:
    try:
        return free.result(max(0.0, ctx.remaining() - _SAFETY_S))
    except TimeoutError:
        return facts_pb2.FreeSpaceFragmentation(available=False, reason="GETFSMAP did not answer within the budget")
    except Exception as exc:  # e.g. the child could not be started: the sample's facts stay
        return facts_pb2.FreeSpaceFragmentation(available=False, reason=_text(f"GETFSMAP failed: {exc}"))


def _text(value: str) -> str:
    return lin.printable_path(value)


def _fstype_of(mountpoint: str) -> str:
    for p in psutil.disk_partitions(all=True):
        if p.mountpoint == mountpoint:
            return str(p.fstype)
    return ""


def _windows(ctx: CollectContext) -> facts_pb2.FragmentationFacts:
    from agent.collect.builtin import fragmentation_windows as win  # only here: not loaded elsewhere

    facts = facts_pb2.FragmentationFacts()
    timeout = max(0.5, ctx.remaining() - _SAFETY_S)
    why = ""
    try:
        res = run_command(
            ["powershell", "-NoProfile", "-NonInteractive", "-Command", win.POWERSHELL_DEFRAG_ANALYSIS],
            timeout=timeout,
            max_bytes=_COMMAND_MAX_BYTES,
        )
        if res.ok:
            facts.filesystems.extend(win.parse_defrag_analysis_json(res.text()))
            if facts.filesystems and all("returned 1:" not in f.note for f in facts.filesystems):
                return facts
            why = "DefragAnalysis was denied"
        else:
            why = res.describe_failure()
    except (CommandNotFound, win.DefragParseError) as exc:
        why = str(exc)
    ctx.warn(f"WMI DefragAnalysis unusable ({why}); falling back to defrag /A /V")
    del facts.filesystems[:]
    for p in psutil.disk_partitions(all=False):
        if p.fstype.upper() not in ("NTFS", "REFS") or ctx.remaining() < 1.0:
            continue
        drive = p.mountpoint.rstrip("\\")
        try:
            res = run_command(
                ["defrag", drive, "/A", "/V"], timeout=ctx.remaining() - _SAFETY_S, max_bytes=_COMMAND_MAX_BYTES
            )
            fs = win.parse_defrag_text(win.decode_console(res.stdout), p.mountpoint)
        except (CommandNotFound, win.DefragParseError) as exc:
            fs = facts_pb2.FsFragmentation(mountpoint=p.mountpoint, method="defrag-output", note=str(exc))
        fs.device, fs.fstype = p.device, p.fstype
        facts.filesystems.append(fs)
    return facts


def _macos(ctx: CollectContext) -> facts_pb2.FragmentationFacts:
    from agent.collect.builtin import fragmentation_macos as mac  # only here: plistlib, expat

    facts = facts_pb2.FragmentationFacts(unsupported_reason=mac.APFS_REASON)
    timeout = max(0.5, min(3.0, ctx.remaining() - _SAFETY_S))
    try:
        res = run_command(["diskutil", "info", "-plist", "/"], timeout=timeout, max_bytes=_COMMAND_MAX_BYTES)
        info = mac.parse_diskutil_info(res.stdout)
    except (CommandNotFound, mac.MacParseError) as exc:
        ctx.warn(f"diskutil info: {exc}")
        return facts
    snapshots: int | None = None
    try:
        snap = run_command(["tmutil", "listlocalsnapshots", "/"], timeout=timeout, max_bytes=_COMMAND_MAX_BYTES)
        if snap.ok:
            snapshots = mac.parse_local_snapshots(snap.text())
    except CommandNotFound as exc:
        ctx.warn(str(exc))
    facts.filesystems.append(mac.apfs_facts(info, snapshots))
    return facts
