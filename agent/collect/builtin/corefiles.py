"""Core files from systemd-coredump's store, only when the machine's owner allows them.

A core file holds the crashed process's memory — secrets included — and no redaction can
clean it, so the ``coredumps`` collector includes none by default. The owner allows them
in the agent's policy (``crash_core_files``, ``crash_core_max_bytes``) or for one run
(``casefile collect --only coredumps --set coredump_files=true``); the preview lists every
core file with its size before anything is sealed.

Options: ``coredump_files`` (bool), ``coredump_max_bytes`` (the bound of all core files
together, ``CORE_MAX_BYTES`` by default, at most ``CORE_MAX_BYTES_LIMIT``),
``coredump_dir`` (the store, ``/var/lib/systemd/coredump``).

The newest files go first; each goes whole (never cut) while it fits in what is left of
the bound, an older smaller one may still fit after a big one was left out. Files are
taken as stored (``.zst``, ``.lz4``, ``.xz`` compressed or not), opened with
``O_NOFOLLOW`` and kept only when regular, copied into the run's private temp area and
handed over as members ``cores/<name>`` (a backslash of systemd's ``\\xNN`` escapes
becomes ``_``) of kind ``core`` — which the privacy phase copies
byte for byte under ``standard`` and never keeps under ``private`` or ``facts-only``.
Every file considered is recorded in ``CoredumpFacts.core_files``: included, or left out
and why (the bound, unreadable, not a regular file, the budget).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from agent.collect.framework import CollectContext
from agent.collect.options import BoolOption, IntOption, StrOption
from agent.errors import CollectionError
from protos import facts_pb2

__all__ = ["CORE_MAX_BYTES", "CORE_MAX_BYTES_LIMIT", "DEFAULT_STORE", "take_core_files"]

CORE_MAX_BYTES = 64 << 20
CORE_MAX_BYTES_LIMIT = 1 << 32  # 4 GiB, what a collector accepts by default; agent.daemon.policy.LIMITS has the same
DEFAULT_STORE = "/var/lib/systemd/coredump"
MAX_CONSIDERED = 100
_BLOCK = 1 << 20
# core.<comm>.<uid>.<boot id>.<pid>.<usec>[.<compression>] (systemd-coredump's naming)
_NAME = re.compile(r"^core\..+\.(\d+)\.[0-9a-f]{32}\.(\d+)\.(\d+)(?:\.(?:zst|lz4|xz))?$")


# Set from the agent's policy.json (crash_core_files, crash_core_max_bytes) for live runs.
FILES = BoolOption(
    "coredump_files",
    False,
    "the coredumps collector includes systemd-coredump's core files (process memory, secrets included: "
    "copied unredacted, and only under the standard profile)",
)
MAX_BYTES = IntOption(
    "coredump_max_bytes",
    CORE_MAX_BYTES,
    "core files kept at most, newest first, whole files",
    shown_default="67108864 (64 MiB)",
    maximum=CORE_MAX_BYTES_LIMIT,
)
STORE = StrOption("coredump_dir", DEFAULT_STORE, "where systemd-coredump keeps core files")
CORE_OPTIONS = (FILES, MAX_BYTES, STORE)


def _pid_of(name: str, listed: dict[tuple[int, int], int]) -> int:
    """The pid of the listed entry this store name belongs to (same pid and second), else 0."""
    m = _NAME.match(name)
    if m is None:
        return 0
    pid, second = int(m.group(2)), int(m.group(3)) // 1_000_000
    return pid if (pid, second) in listed else 0


def take_core_files(ctx: CollectContext, facts: facts_pb2.CoredumpFacts) -> None:
    """Include the newest core files within the bound, when allowed; record each one considered."""
    if not ctx.get(FILES):
        return
    bound = ctx.get(MAX_BYTES)
    store = Path(ctx.get(STORE))
    listed = {(c.pid, c.time.seconds): c.pid for c in facts.coredumps}
    try:
        found = [e for e in os.scandir(store) if e.name.startswith("core.")]
    except OSError as exc:
        ctx.warn(f"core files: {store}: {exc.strerror or exc}")
        return
    entries: list[tuple[int, os.DirEntry[str]]] = []
    for e in found:
        try:
            entries.append((e.stat(follow_symlinks=False).st_mtime_ns, e))
        except OSError:
            continue
    entries.sort(key=lambda t: (t[0], t[1].name), reverse=True)
    left = bound
    for i, (_, e) in enumerate(entries[:MAX_CONSIDERED]):
        note = facts.core_files.add(name=e.name[:255], pid=_pid_of(e.name, listed))  # add(): not a copy
        left -= _take_one(ctx, store / e.name, note, left, f"{i}.core")
    if len(entries) > MAX_CONSIDERED:
        ctx.warn(f"core files: {len(entries) - MAX_CONSIDERED} older ones not considered")


def _take_one(ctx: CollectContext, path: Path, note: facts_pb2.CoreFile, left: int, temp_name: str) -> int:
    """Copy one core file into the temp area and hand it over; the bytes it used of the bound."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        note.reason = "a symbolic link, not followed" if os.path.islink(path) else f"unreadable: {exc.strerror or exc}"
        return 0
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            note.reason = "not a regular file"
            return 0
        note.size = st.st_size
        if st.st_size > left:
            note.reason = f"over the bound: {st.st_size} bytes, {max(left, 0)} left of coredump_max_bytes"
            return 0
        if ctx.remaining() < 1:
            note.reason = "the collector's time budget ran out"
            return 0
        dst_path = ctx.temp_path(temp_name)
        copied = 0
        try:
            out = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(out, "wb") as dst:
                while copied < st.st_size:  # whole as it was at fstat: a growing file is not read on
                    block = src.read(min(_BLOCK, st.st_size - copied))
                    if not block:
                        break
                    dst.write(block)
                    copied += len(block)
        except OSError as exc:
            dst_path.unlink(missing_ok=True)
            note.reason = f"unreadable: {exc.strerror or exc}"
            return 0
    if copied != st.st_size:
        dst_path.unlink(missing_ok=True)
        note.reason = f"changed while read: {copied} of {st.st_size} bytes"
        return 0
    try:
        # systemd escapes a command name's odd characters as \xNN: no backslash in a member name.
        ctx.add_artifact_file(f"cores/{note.name.replace(chr(92), '_')}", dst_path, kind="core")
    except CollectionError as exc:  # a name no bundle member may have: this file only
        dst_path.unlink(missing_ok=True)
        note.reason = f"left out: {str(exc)[:200]}"
        return 0
    note.included = True
    return copied
