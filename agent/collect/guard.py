"""The resource guard: a collection runs at low CPU and I/O priority, then restores them.

A customer runs diagnostics on a machine that is already in trouble; the agent must not
make it worse. On Linux ``nice`` and ``ioprio`` are per thread, and threads inherit them
when created, so lowering them in the runner's thread before starting the collector
threads covers every collector and every command they start; the runner's own thread is
restored afterwards (as root, or as anyone for ioprio; an unprivileged process may not
raise its nice value back, which is then left lowered and noted).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import psutil

__all__ = ["NICE_INCREMENT", "lowered_priority"]

NICE_INCREMENT = 10


@contextlib.contextmanager
def lowered_priority(enabled: bool = True) -> Iterator[list[str]]:
    """Lower CPU and I/O priority for the block; yields notes on what was (not) done."""
    notes: list[str] = []
    if not enabled:
        yield notes
        return
    undo: list[tuple[str, object]] = []
    _lower_cpu(notes, undo)
    _lower_io(notes, undo)
    try:
        yield notes
    finally:
        _restore(notes, undo)


def _lower_cpu(notes: list[str], undo: list[tuple[str, object]]) -> None:
    proc = psutil.Process()
    try:
        if sys.platform == "win32":
            old = proc.nice()
            proc.nice(psutil.BELOW_NORMAL_PRIORITY_CLASS)
            undo.append(("win-priority", old))
        elif hasattr(os, "nice"):
            old_nice = os.nice(0)
            os.nice(NICE_INCREMENT)
            undo.append(("nice", old_nice))
        notes.append("cpu priority lowered")
    except (OSError, psutil.Error, AttributeError) as exc:
        notes.append(f"cpu priority unchanged: {exc}")


def _lower_io(notes: list[str], undo: list[tuple[str, object]]) -> None:
    if not sys.platform.startswith("linux"):
        return  # ionice exists on Windows too, but below-normal CPU class already lowers I/O
    proc = psutil.Process()
    try:
        old = proc.ionice()
        proc.ionice(psutil.IOPRIO_CLASS_IDLE)
        undo.append(("ionice", old))
        notes.append("io priority idle")
    except (OSError, psutil.Error, AttributeError, ValueError) as exc:
        notes.append(f"io priority unchanged: {exc}")


def _restore(notes: list[str], undo: list[tuple[str, object]]) -> None:
    proc = psutil.Process()
    for what, old in reversed(undo):
        try:
            if what == "nice" and isinstance(old, int):
                os.setpriority(os.PRIO_PROCESS, 0, old)
            elif what == "win-priority" and isinstance(old, int):
                proc.nice(old)
            elif what == "ionice" and isinstance(old, tuple):
                ioclass, value = int(old[0]), int(old[1])
                proc.ionice(ioclass, value if ioclass in (1, 2) else None)
        except (OSError, psutil.Error, ValueError) as exc:
            notes.append(f"{what} not restored: {exc}")
