"""Linux fragmentation: a bounded, unbiased sample of files per filesystem, mapped with FIEMAP.

The sampler itself (walk, reservoir, FIEMAP pass, summary) is ``agent.collect.fragwalk``,
standard library only, so that it can run in a child interpreter: see that module for
the sampling design and for why. ``sample_in_child`` runs it there (what the collector
does), ``sample_filesystem`` in the calling thread (tests, tools, and the fallback when
no child interpreter can be started). Free-space fragmentation (GETFSMAP) and the
media type are read here, in the collector's own process.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from agent.collect import fiemap, fragwalk
from agent.collect.command import CommandCancelled, run_command
from agent.collect.fragwalk import (
    DEFAULT_MIN_BYTES,
    FREE_SPACE_FSTYPES,
    IDEAL_EXTENT_BYTES,
    WORST_FILES,
    Bounds,
    Candidate,
    Mapped,
    Mapper,
    WalkResult,
    bucket,
    ideal_fragments,
    percentile,
    printable_path,
    walk,
)
from agent.errors import CollectionError
from protos import facts_pb2

__all__ = [
    "DEFAULT_MIN_BYTES",
    "FREE_SPACE_FSTYPES",
    "IDEAL_EXTENT_BYTES",
    "SKIP_FSTYPES",
    "WORST_FILES",
    "Bounds",
    "Candidate",
    "ChildUnavailable",
    "Mapped",
    "Mapper",
    "WalkResult",
    "bucket",
    "free_space_facts",
    "free_space_in_child",
    "ideal_fragments",
    "media_of",
    "open_by",
    "percentile",
    "printable_path",
    "sample_filesystem",
    "sample_in_child",
    "walk",
]

# Filesystems with no extents of their own (or whose walk would hit the network).
SKIP_FSTYPES = frozenset(
    {
        "proc",
        "sysfs",
        "tmpfs",
        "devtmpfs",
        "devpts",
        "squashfs",
        "overlay",
        "autofs",
        "ramfs",
        "cgroup",
        "cgroup2",
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "zfs",
        "iso9660",
        "fuseblk",
    }
)
# The directory holding the ``agent`` package, for the child's imports.
_PACKAGE_ROOT = str(Path(fragwalk.__file__).resolve().parents[2])
# The child imports ``agent.collect.fragwalk`` without running the package __init__
# files (protobuf, psutil: ~60 ms and pointless there): ``agent`` and ``agent.collect``
# are stood in by empty packages whose __path__ is the real folder. ``-I -S``: no
# site-packages, no PYTHON* variables, no current directory on the path.
_CHILD_BOOT = (
    "import sys, types\n"
    "for name in ('agent', 'agent.collect'):\n"
    "    pkg = types.ModuleType(name)\n"
    "    pkg.__path__ = [sys.argv[1] + '/' + name.replace('.', '/')]\n"
    "    sys.modules[name] = pkg\n"
    "from agent.collect.fragwalk import child_main\n"
    "sys.exit(child_main(sys.argv[2:]))\n"
)
_CHILD_GRACE_S = 1.0  # past its own deadline, before the child is killed as hung
_CHILD_MAX_BYTES = 1 << 20  # the answer is a summary: a few KiB


_M = TypeVar("_M")


class ChildUnavailable(Exception):
    """No child interpreter could be started here (frozen build, no executable)."""


def sample_filesystem(
    mountpoint: str,
    bounds: Bounds,
    *,
    rng: random.Random | None = None,
    mapper: Mapper = fiemap.fragments_of_fd,
) -> facts_pb2.FsFragmentation:
    """Walk and map one filesystem within ``bounds`` in this thread; never raises for one bad file."""
    return facts_pb2.FsFragmentation(**fragwalk.sample(mountpoint, bounds, rng=rng, mapper=mapper))


def sample_in_child(
    mountpoint: str,
    bounds: Bounds,
    *,
    seed: int | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
) -> facts_pb2.FsFragmentation:
    """``sample_filesystem`` in a child interpreter, off this process's GIL.

    The child keeps to ``bounds.budget_s`` on its own (counted from now); it is killed
    if it has not answered within the budget plus a grace, or ``timeout`` seconds if
    that is sooner. It stops early by itself if this process goes away. Raises
    ChildUnavailable when no child can be started, OSError when the mount point cannot
    be walked, CollectionError when the child failed or ``cancel`` was set.
    """
    request = {
        "op": "sample",
        "mountpoint": mountpoint,
        "max_files": bounds.max_files,
        "budget_s": bounds.budget_s,
        "min_bytes": bounds.min_bytes,
        "seed": seed,
        "started": time.monotonic(),
        "parent": os.getpid(),
    }
    limit = bounds.budget_s + _CHILD_GRACE_S
    answer = _run_child(request, limit if timeout is None else min(limit, timeout), cancel)
    if answer.get("ok") is False:
        raise OSError(answer.get("errno"), answer.get("strerror"), answer.get("filename"))
    return _message(facts_pb2.FsFragmentation, answer, request)


def free_space_facts(
    mountpoint: str, fstype: str, *, budget_s: float | None = None
) -> facts_pb2.FreeSpaceFragmentation:
    """GETFSMAP where the filesystem has a reverse map and we may read it, else why not.

    Reading the map stops after ``budget_s`` (None: no bound); the facts then say it is partial.
    """
    return facts_pb2.FreeSpaceFragmentation(**fragwalk.free_space_fields(mountpoint, fstype, budget_s=budget_s))


def free_space_in_child(
    mountpoint: str,
    fstype: str,
    *,
    timeout: float,
    budget_s: float | None = None,
    cancel: threading.Event | None = None,
) -> facts_pb2.FreeSpaceFragmentation:
    """``free_space_facts`` in a child interpreter: ``fcntl.ioctl`` would hold our GIL through it.

    The child stops reading the map after ``budget_s`` by itself (counted from now); it is
    killed after that plus a grace, or ``timeout`` if sooner. Raises ChildUnavailable
    when no child can be started, CollectionError when it failed.
    """
    if fstype not in FREE_SPACE_FSTYPES:
        return free_space_facts(mountpoint, fstype)  # says why, without asking the kernel
    request = {
        "op": "free_space",
        "mountpoint": mountpoint,
        "fstype": fstype,
        "budget_s": budget_s,
        "started": time.monotonic(),
    }
    if budget_s is not None:
        timeout = min(timeout, budget_s + _CHILD_GRACE_S)
    return _message(facts_pb2.FreeSpaceFragmentation, _run_child(request, timeout, cancel), request)


def _run_child(request: dict[str, Any], timeout: float, cancel: threading.Event | None = None) -> dict[str, Any]:
    """One request to a fresh ``fragwalk`` child; its JSON answer."""
    exe = sys.executable
    if not exe or getattr(sys, "frozen", False):
        raise ChildUnavailable("no Python executable to start")
    try:
        res = run_command(
            [exe, "-I", "-S", "-c", _CHILD_BOOT, _PACKAGE_ROOT, json.dumps(request)],
            timeout=timeout,
            max_bytes=_CHILD_MAX_BYTES,
            cancel=cancel,
        )
    except CommandCancelled:
        raise
    except CollectionError as exc:  # CommandNotFound included: the executable is gone
        raise ChildUnavailable(str(exc)) from None
    except OSError as exc:  # cannot start one: a pids limit (EAGAIN), ENOMEM, EMFILE, ENOEXEC
        raise ChildUnavailable(f"cannot start {exe}: {exc}") from None
    what = f"fragmentation {request['op']} child"
    if not res.ok or res.truncated:
        raise CollectionError(f"{what}: {res.describe_failure()}")
    try:
        answer = json.loads(res.stdout)
    except ValueError as exc:
        raise CollectionError(f"{what}: unreadable answer: {exc}") from None
    if not isinstance(answer, dict):
        raise CollectionError(f"{what}: answer not understood: {str(answer)[:200]}")
    return answer


def _message(kind: Callable[..., _M], answer: dict[str, Any], request: dict[str, Any]) -> _M:
    """The child's ``fields`` as a message; an answer of another shape is the child's failure."""
    fields = answer.get("fields") if isinstance(answer, dict) and answer.get("ok") is True else None
    try:
        if not isinstance(fields, dict):
            raise TypeError(f"no fields in {str(answer)[:200]}")
        return kind(**fields)
    except (TypeError, ValueError) as exc:  # unknown field, wrong type, not UTF-8
        raise CollectionError(f"fragmentation {request['op']} child: answer not understood: {exc}") from None


def media_of(path: str) -> str:
    """ "ssd" or "rotational" for the block device under ``path``; "" when it cannot be told."""
    try:
        st_dev = os.stat(path).st_dev
    except OSError:
        return ""
    base = f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}"
    for candidate in (f"{base}/queue/rotational", f"{base}/../queue/rotational"):
        try:
            with open(candidate) as fh:
                value = fh.read().strip()
        except OSError:
            continue
        return {"0": "ssd", "1": "rotational"}.get(value, "")
    return ""


def open_by(paths: set[str], exclude: set[int], deadline: float) -> tuple[dict[str, list[tuple[int, str]]], bool]:
    """The processes (pid, name) holding each of ``paths`` open, from ``/proc/*/fd``.

    A fragmented file that some process is reading is what turns fragmentation into load
    (the fragmentation-kernel-load rule names it). Processes in ``exclude`` (the agent's
    own) are left out; so are those whose descriptors we may not read (another user's,
    when not root). Stops at ``deadline`` (``time.monotonic()``) with what it found;
    the flag says whether every process was looked at.
    """
    found: dict[str, list[tuple[int, str]]] = {}
    if not paths:
        return found, True
    try:
        pids = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return found, False
    for pid in pids:
        if pid in exclude:
            continue
        if time.monotonic() >= deadline:
            return found, False
        base = f"/proc/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:  # gone, or not ours to read
            continue
        hits = set()
        for fd in names:
            try:
                target = printable_path(os.readlink(f"{base}/{fd}"))
            except OSError:
                continue
            if target in paths:
                hits.add(target)
        if hits:
            try:
                with open(f"/proc/{pid}/comm") as fh:
                    name = fh.read().strip()
            except OSError:
                name = ""
            for target in sorted(hits):
                found.setdefault(target, []).append((pid, name))
    return found, True
