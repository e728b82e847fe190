"""Crash artefacts: what the machine kept of its crashes (the ``crashes`` scope).

Three collectors, each with its own budget so a slow journal never costs the others:

- ``coredumps``: systemd-coredump's entries, ``coredumpctl --json=short list`` (newest
  ``MAX_COREDUMPS``), and ``coredumpctl info`` of the newest ``INFO_COUNT`` for the
  command line, unit and the first frames of the crashing thread. Metadata only unless
  the machine's owner allows core files (``agent.collect.builtin.corefiles``: policy
  ``crash_core_files``, or ``--set coredump_files=true``): a core file holds the
  process's memory, secrets included.
- ``kernel_crashes``: the kernel's own record of its last death, ``/sys/fs/pstore``
  (files listed, their oops/panic lines kept), and the previous boot's kernel lines that
  name an oops, a panic, a BUG or a call trace (``journalctl -b -1 -k``).
- ``crash_files``: the listing of ``/var/crash`` (apport, kdump): names, sizes, times.

Every text goes through the bundle's redaction like all facts. Option ``crash_dir``
names another folder than ``/var/crash`` (tests; a distribution that keeps them
elsewhere).
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from agent.collect.builtin.corefiles import CORE_OPTIONS, take_core_files
from agent.collect.command import CommandNotFound, run_command
from agent.collect.framework import CollectContext, Collector
from agent.collect.options import StrOption
from protos import facts_pb2

__all__ = [
    "CoredumpsCollector",
    "CrashFilesCollector",
    "KernelCrashesCollector",
    "crash_lines",
    "parse_coredump_info",
    "parse_coredump_list",
]

MAX_COREDUMPS = 100
INFO_COUNT = 5
MAX_LINES = 200
MAX_FILES = 200
_STACK_FRAMES = 16
_LINE_MAX = 512
_OUT_MAX = 4 << 20
_CRASH = re.compile(
    r"Oops|Kernel panic|\bBUG[: ]|Call Trace:|general protection fault|Unable to handle kernel|"
    r"kernel BUG at|RIP: |watchdog: BUG: soft lockup|hung_task|Out of memory: Killed process"
)


def crash_lines(text: str, limit: int = MAX_LINES) -> list[str]:
    """The lines of a kernel log naming a crash, cut to ``_LINE_MAX`` characters, at most ``limit``."""
    out: list[str] = []
    for line in text.splitlines():
        if _CRASH.search(line):
            out.append(line.strip()[:_LINE_MAX])
            if len(out) >= limit:
                break
    return out


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return ""


def parse_coredump_list(text: str) -> list[facts_pb2.Coredump]:
    """``coredumpctl --json=short list``: one JSON array; ``time`` is in microseconds."""
    try:
        data = json.loads(text) if text.strip() else []
    except RecursionError:
        raise ValueError("coredumpctl --json nested too deeply") from None
    if not isinstance(data, list):
        raise ValueError("coredumpctl --json did not give a JSON array")
    out: list[facts_pb2.Coredump] = []
    for e in data:
        if not isinstance(e, dict):
            continue
        c = facts_pb2.Coredump()

        def number(key: str, entry: dict[str, object] = e) -> int:
            v = entry.get(key)
            return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 2**62 else 0

        us = number("time")
        if us > 0:
            c.time.FromMicroseconds(us)
        c.pid, c.uid, c.gid = number("pid"), number("uid"), number("gid")
        sig = e.get("sig")
        c.signal = sig if isinstance(sig, int) and not isinstance(sig, bool) and 0 <= sig < 256 else 0
        if isinstance(sig, str):  # older systemd: "SIGSEGV"
            c.signal_name = sig[:16]
        else:
            c.signal_name = _signal_name(c.signal) if c.signal else ""
        c.executable = str(e.get("exe") or "")[:1024]
        c.corefile = str(e.get("corefile") or "")[:32]
        c.size = max(0, number("size"))
        out.append(c)
    out.sort(key=lambda c: c.time.ToMicroseconds(), reverse=True)
    return out


def parse_coredump_info(text: str) -> dict[str, object]:
    """``coredumpctl info``: the fields we keep of one entry (``Command Line``, ``Unit``,
    ``PID``, ``Timestamp``) and the first frames of ``Stack trace of thread``."""
    fields: dict[str, object] = {}
    stack: list[str] = []
    in_stack = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Stack trace of thread"):
            if stack:
                break  # the crashing thread is the first one shown
            in_stack = True
            continue
        if in_stack:
            if s.startswith("#"):
                if len(stack) < _STACK_FRAMES:
                    stack.append(" ".join(s.split())[:_LINE_MAX])
                continue
            if stack:
                break
        key, sep, value = s.partition(": ")
        if sep and key in ("PID", "Command Line", "Unit", "Executable", "Signal"):
            fields.setdefault(key, value.strip()[:_LINE_MAX])
    fields["stack"] = stack
    return fields


PSTORE_DIR = StrOption("pstore_dir", "/sys/fs/pstore", "where the kernel keeps its crash records (pstore)")
CRASH_DIR = StrOption("crash_dir", "/var/crash", "the crash-report folder (apport, kdump)")


class CoredumpsCollector(Collector):
    name = "coredumps"
    description = "systemd-coredump's entries (coredumpctl list and info); core files only when allowed"
    platforms = frozenset({"linux"})
    budget_s = 10.0
    facts_field = "coredumps"
    facts_type = facts_pb2.CoredumpFacts
    options = CORE_OPTIONS

    def collect(self, ctx: CollectContext) -> facts_pb2.CoredumpFacts:
        facts = facts_pb2.CoredumpFacts()
        self._entries(ctx, facts)
        take_core_files(ctx, facts)
        return facts

    def _entries(self, ctx: CollectContext, facts: facts_pb2.CoredumpFacts) -> None:
        base = ["coredumpctl", "--no-pager", "--no-legend"]
        try:
            listed = run_command([*base, "--json=short", "list"], timeout=ctx.remaining() / 2, max_bytes=_OUT_MAX)
        except CommandNotFound as exc:
            facts.detail = str(exc)
            return
        if not listed.ok:
            # "No coredumps found." exits 1: that is an answer, not a failure.
            err = listed.stderr.decode("utf-8", "replace")
            facts.detail = "no coredumps recorded" if "No coredumps found" in err else listed.describe_failure()
            return
        try:
            dumps = parse_coredump_list(listed.text())
        except ValueError as exc:
            facts.detail = f"coredumpctl list unreadable: {str(exc)[:200]}"
            return
        facts.total = len(dumps)
        facts.coredumps.extend(dumps[:MAX_COREDUMPS])
        for c in facts.coredumps[:INFO_COUNT]:
            if ctx.remaining() < 1 or c.pid <= 0:
                break
            info = run_command([*base, "info", str(c.pid)], timeout=min(3.0, ctx.remaining()), max_bytes=_OUT_MAX)
            if not info.ok:
                ctx.warn(f"coredumpctl info {c.pid}: {info.describe_failure()}")
                continue
            got = parse_coredump_info(info.text())
            c.command_line = str(got.get("Command Line", ""))
            c.unit = str(got.get("Unit", ""))
            stack = got.get("stack")
            if isinstance(stack, list):
                c.stack.extend(str(f) for f in stack)


class KernelCrashesCollector(Collector):
    name = "kernel_crashes"
    description = "The kernel's crash record: /sys/fs/pstore and the previous boot's oops/panic lines"
    platforms = frozenset({"linux"})
    budget_s = 10.0
    facts_field = "kernel_crashes"
    facts_type = facts_pb2.KernelCrashFacts
    options = (PSTORE_DIR,)

    def collect(self, ctx: CollectContext) -> facts_pb2.KernelCrashFacts:
        facts = facts_pb2.KernelCrashFacts()
        notes: list[str] = []
        pstore = Path(ctx.get(PSTORE_DIR))
        files = _listing(pstore, notes, "pstore")
        facts.pstore.extend(files[:MAX_FILES])
        for f in files[:MAX_FILES]:
            try:
                with open(f.path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read(_OUT_MAX)
            except OSError as exc:
                notes.append(f"pstore {f.path}: {exc.strerror or exc}")
                continue
            facts.pstore_lines.extend(crash_lines(text, MAX_LINES - len(facts.pstore_lines)))
        try:
            done = run_command(
                ["journalctl", "--no-pager", "-q", "-k", "-b", "-1", "-o", "short-iso"],
                timeout=ctx.remaining(),
                max_bytes=64 << 20,
            )
        except CommandNotFound as exc:
            notes.append(f"previous boot: {exc}")
        else:
            if done.ok:
                facts.previous_boot.extend(crash_lines(done.text()))
                if not facts.previous_boot:
                    notes.append("previous boot: no oops, panic, BUG or call trace in its kernel log")
                if done.truncated:
                    notes.append("previous boot: kernel log longer than 64 MiB, the rest not read")
            else:
                notes.append(f"previous boot: {done.describe_failure()}")
        facts.detail = "; ".join(notes)
        return facts


class CrashFilesCollector(Collector):
    name = "crash_files"
    description = "The crash-report folder's listing (/var/crash: apport, kdump)"
    platforms = frozenset({"linux"})
    budget_s = 3.0
    facts_field = "crash_files"
    facts_type = facts_pb2.CrashFileFacts
    options = (CRASH_DIR,)

    def collect(self, ctx: CollectContext) -> facts_pb2.CrashFileFacts:
        folder = Path(ctx.get(CRASH_DIR))
        notes: list[str] = []
        files = _listing(folder, notes, str(folder))
        facts = facts_pb2.CrashFileFacts(directory=str(folder), total=len(files), detail="; ".join(notes))
        facts.files.extend(files[:MAX_FILES])
        return facts


def _listing(folder: Path, notes: list[str], what: str) -> list[facts_pb2.CrashFile]:
    """The regular files under ``folder`` (one level of subfolders, as kdump makes), newest first."""
    out: list[facts_pb2.CrashFile] = []
    try:
        top = list(os.scandir(folder))
    except FileNotFoundError:
        notes.append(f"{what}: no such folder")
        return out
    except OSError as exc:
        notes.append(f"{what}: {exc.strerror or exc}")
        return out
    entries: list[os.DirEntry[str]] = []
    for e in top:
        if e.is_dir(follow_symlinks=False):
            try:
                entries.extend(os.scandir(e.path))
            except OSError as exc:
                notes.append(f"{e.path}: {exc.strerror or exc}")
        else:
            entries.append(e)
    for e in entries[: 10 * MAX_FILES]:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not e.is_file(follow_symlinks=False):
            continue
        f = facts_pb2.CrashFile(path=e.path[:1024], size=st.st_size)
        f.modified.FromNanoseconds(st.st_mtime_ns)
        out.append(f)
    out.sort(key=lambda f: f.modified.ToNanoseconds(), reverse=True)
    return out
