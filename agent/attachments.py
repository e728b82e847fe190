"""Files a customer attaches with ``--add-file``: regular files on real filesystems only.

A path may name anything: ``/proc/kmsg`` stats as a regular file of size 0 and blocks a
reader for ever, ``/proc/self/mem`` fails with a bare "Input/output error", a FIFO
waits for a writer, ``/dev/zero`` never ends. An attachment is therefore checked before
the collection starts (so a typo costs no collection) and read through a guard that
stops at the declared size bound, and every error names the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, cast

from agent.errors import CasefileError

__all__ = ["ATTACHMENT_MAX_BYTES", "AttachmentError", "check_attachment", "open_attachment"]



class AttachmentError(CasefileError):
    """An attachment cannot be read as asked; the message names the file."""


# Support asks for config files and application logs, not disk images: 512 MiB is far
# above the former and still bounds the time a run can spend reading one.
ATTACHMENT_MAX_BYTES = 512 << 20

# Kernel and virtual filesystems whose "files" are interfaces, not content: reading one
# may block (kmsg), fail (mem), never end or change the system (some sysfs knobs).
_PSEUDO_FILESYSTEMS = frozenset(
    {
        "proc", "sysfs", "devtmpfs", "devpts", "debugfs", "tracefs", "securityfs", "cgroup", "cgroup2",
        "configfs", "pstore", "bpf", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "binfmt_misc",
        "autofs", "rpc_pipefs", "nsfs",
    }
)  # fmt: skip


def _mount_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The filesystem type of the mount holding ``path`` (None when it cannot be told)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    best, fstype = "", None
    target = str(path)
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        # Mount points escape space, tab, newline and backslash as octal (\040 …).
        point = fields[4].encode("latin-1", "replace").decode("unicode_escape", "replace")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, right.split()[0]
    return fstype


def check_attachment(path: Path, *, max_bytes: int = ATTACHMENT_MAX_BYTES) -> Path:
    """The resolved path of an attachment that may be read, or a AttachmentError naming it."""
    flag = f"--add-file {path}"
    try:
        real = path.resolve(strict=True)
        st = os.stat(real)
    except FileNotFoundError:
        raise AttachmentError(f"{flag}: no such file") from None
    except OSError as exc:
        raise AttachmentError(f"{flag}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
        raise AttachmentError(f"{flag}: {kind}, not a regular file")
    fstype = _mount_type(real)
    if fstype in _PSEUDO_FILESYSTEMS:
        raise AttachmentError(f"{flag}: on a {fstype} filesystem (a kernel interface, not a file to attach)")
    if st.st_size > max_bytes:
        raise AttachmentError(f"{flag}: {st.st_size:,} bytes, over the {max_bytes:,}-byte limit for an attachment")
    if not os.access(real, os.R_OK):
        raise AttachmentError(f"{flag}: not readable (permission denied)")
    return real


class _Bounded:
    """A binary reader that names the file on every error and stops past ``max_bytes``."""

    def __init__(self, path: Path, fh: IO[bytes], max_bytes: int) -> None:
        self._path, self._fh, self._left = path, fh, max_bytes

    def read(self, size: int = -1) -> bytes:
        want = self._left + 1 if size < 0 else min(size, self._left + 1)
        try:
            data = self._fh.read(want)
        except OSError as exc:
            raise AttachmentError(f"--add-file {self._path}: {exc.strerror or exc} while reading") from None
        self._left -= len(data)
        if self._left < 0:
            raise AttachmentError(f"--add-file {self._path}: grew past the attachment limit while being read")
        return data

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> _Bounded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_attachment(path: Path, *, max_bytes: int = ATTACHMENT_MAX_BYTES) -> IO[bytes]:
    """Open a checked attachment without following a swap to a FIFO made after the check."""
    real = check_attachment(path, max_bytes=max_bytes)
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise AttachmentError(f"--add-file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AttachmentError(f"--add-file {path}: changed into something other than a regular file")
    # Only read() and the context manager are used by the redactor and the gate.
    return cast("IO[bytes]", _Bounded(path, os.fdopen(fd, "rb"), max_bytes))
