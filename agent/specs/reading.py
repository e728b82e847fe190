"""Reading what a spec names: files inside its globs only, product logs newest first.

A glob is expanded, and every match is resolved (``realpath``) and must *still* match
the glob: a symlink inside ``/etc/postgresql/*/main/*.conf`` that points at
``/etc/shadow`` is refused, so a spec reads only where it says it reads. The file is
then opened with ``O_NOFOLLOW`` (a symlink swapped in meanwhile fails the open) and
``O_NONBLOCK`` (a FIFO cannot hang the read), and must be a regular file; on Linux the
opened file's own path (``/proc/self/fd``) must still be the one checked, so a folder
swapped for a symlink between the check and the open is caught too.

Some files are never read by a spec, whatever it says (``NEVER_READ``): password and
key material — the shadow files, SSH and TLS private keys, the agent's own keys. A
signed spec is trusted to ask for a product's files, not for the machine's secrets.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import glob
import os
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from agent.collect import LogRecord, NewestFirstSink, guess_severity, parse_text_line, read_lines_backwards
from agent.specs.model import _PARAM_RE
from agent.specs.patterns import MAX_MATCH_CHARS, SpecPattern

__all__ = ["NEVER_READ", "Refused", "expand", "matching_files", "read_bounded", "read_log", "redact_text"]

_MAX_GLOB_HITS = 1000
NEVER_READ: tuple[str, ...] = (
    "/etc/shadow*",
    "/etc/gshadow*",
    "/etc/security/opasswd",
    "/etc/ssh/ssh_host_*key",
    "*/.ssh/*",
    "/etc/ssl/private/*",
    "/etc/pki/tls/private/*",
    "*.key",
    "*/agent.key",
    "*/redact.key",
    "*/.gnupg/*",
    "*/.pgpass",
)


class Refused(Exception):
    """A match the spec may not read (a symlink out of its glob, not a regular file)."""


def expand(text: str, params: Mapping[str, str]) -> str:
    """``{name}`` replaced by the parameter's value (checked when the spec was parsed)."""
    return _PARAM_RE.sub(lambda m: params.get(m.group(1), m.group(0)), text)


def _inside(real: str, pattern: str) -> bool:
    return PurePosixPath(real).match(pattern) and PurePosixPath(real).is_absolute()


def matching_files(pattern: str, limit: int) -> tuple[list[Path], list[str]]:
    """The regular files ``pattern`` matches (newest first, at most ``limit``) and why
    other matches were refused."""
    refused: list[str] = []
    found: list[tuple[float, Path]] = []
    if not pattern.startswith("/") or ".." in PurePosixPath(pattern).parts or "\0" in pattern:
        # A parameter's value made it so (the spec's own globs were checked when parsed).
        return [], [f"{pattern}: not an absolute path without '..'; nothing was read"]
    for n, hit in enumerate(glob.iglob(pattern)):
        if n >= _MAX_GLOB_HITS:
            refused.append(f"{pattern}: more than {_MAX_GLOB_HITS} matches; the rest were not looked at")
            break
        real = os.path.realpath(hit)
        if not _inside(real, pattern):
            refused.append(f"{hit}: resolves to {real}, outside {pattern}")
            continue
        if any(fnmatch.fnmatchcase(real, secret) for secret in NEVER_READ):
            refused.append(f"{hit}: secret material is never read by a spec")
            continue
        try:
            st = os.stat(real)
        except OSError as exc:
            refused.append(f"{hit}: {exc.strerror or exc}")
            continue
        if stat.S_ISREG(st.st_mode):
            found.append((st.st_mtime, Path(real)))
        elif not stat.S_ISDIR(st.st_mode):
            refused.append(f"{hit}: not a regular file")
    found.sort(key=lambda item: (-item[0], str(item[1])))
    if len(found) > limit:
        refused.append(f"{pattern}: {len(found)} files match; the newest {limit} were read")
    return [p for _, p in found[:limit]], refused


def _open(path: Path) -> int:
    """``path`` (a resolved path from ``matching_files``) opened for reading, or Refused."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(f"{path}: not a regular file")
        proc = f"/proc/self/fd/{fd}"
        if os.path.exists(proc) and os.path.realpath(proc) != str(path):
            raise Refused(f"{path}: changed into {os.path.realpath(proc)} while it was being opened")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: Path, max_bytes: int) -> tuple[bytes, bool]:
    """The first ``max_bytes`` of ``path`` and whether there was more."""
    fd = _open(path)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)
    return data[:max_bytes], len(data) > max_bytes


def redact_text(text: str, patterns: tuple[tuple[str, SpecPattern], ...], hits: dict[str, int]) -> str:
    """``text`` with each pattern's matches replaced by ``[REDACTED:<name>]``, counted.

    Line by line: a line on which a pattern runs out of time is replaced whole
    (``[REDACTED:<name>:timeout]``), never passed on unredacted.
    """
    if not patterns or not text:
        return text
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        for name, pattern in patterns:
            done = pattern.subn(f"[REDACTED:{name}]", line)
            if done is None:
                end = line[len(line.rstrip("\r\n")) :]
                line, n = f"[REDACTED:{name}:timeout]{end}", 1
            else:
                line, n = done
            if n:
                hits[name] = hits.get(name, 0) + n
        lines[i] = line
    return "".join(lines)


def _parse(line: str, fmt: str, hint: dt.datetime) -> tuple[dt.datetime | None, str | None, str]:
    if fmt == "auto":
        return parse_text_line(line, year_hint=hint)
    words = fmt.count(" ") + 1
    parts = line.split(" ", words)
    try:
        ts = dt.datetime.strptime(" ".join(parts[:words]), fmt)
    except ValueError:
        return None, None, line
    ts = ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts.astimezone(dt.UTC)
    return ts, None, parts[words] if len(parts) > words else ""


def read_log(
    files: list[Path],
    sink: NewestFirstSink,
    *,
    fmt: str,
    since: dt.datetime,
    deadline: float,
    redact: tuple[tuple[str, SpecPattern], ...],
    hits: dict[str, int],
) -> Iterator[str]:
    """Feed ``files`` (newest first) into ``sink`` newest line first, stopping at the
    window's start, the sink's cap or ``deadline``; yields each kept message (for counts)."""
    for path in files:
        fd = _open(path)
        hint = dt.datetime.fromtimestamp(os.fstat(fd).st_mtime, dt.UTC)
        with os.fdopen(fd, "rb") as fh:
            older = False
            for n, (_offset, raw) in enumerate(read_lines_backwards(fh)):
                if n % 256 == 0 and time.monotonic() > deadline:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if not line:
                    continue
                ts, sev, msg = _parse(line, fmt, hint)
                if ts is not None and ts < since:
                    older = True
                    break
                msg = redact_text(msg[: 4 * MAX_MATCH_CHARS], redact, hits)
                if not sink.add(LogRecord(ts, sev or guess_severity(msg), msg, extra={"file": str(path)})):
                    return
                yield msg
        if older:
            return
