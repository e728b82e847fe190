"""The one way collectors run external commands: bounded in time and bytes, killed whole.

Every command starts in its own session (POSIX) or process group (Windows), so at its
timeout the *whole group* is killed — a shell's children or a pager included — and a
hung command costs exactly its budget. Output beyond ``max_bytes`` is read and dropped
(the command still finishes normally) and ``truncated`` says so. A missing executable
raises ``CommandNotFound`` whose message is "unsupported: <cmd> not found", which
collectors record as the reason a source is unsupported.

``stream_lines`` is the same with stdout handed over line by line (``journalctl -o
json``): a watchdog kills the group at the deadline, which ends the iteration, and
leaving the ``with`` block early kills it too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from agent.errors import CollectionError

__all__ = ["CommandCancelled", "CommandNotFound", "CommandResult", "LineStream", "run_command", "stream_lines"]

_STDERR_MAX = 64 * 1024
_CHUNK = 64 * 1024
# A reader thread left behind by a grandchild that escaped the group must not hold us.
_READER_GRACE_S = 0.5
_CANCEL_POLL_S = 0.05  # how soon a command notices that its collection was given up


class CommandCancelled(CollectionError):
    """The collection was given up while the command ran; it was killed."""


class CommandNotFound(CollectionError):
    """The executable is not installed; the message reads "unsupported: <cmd> not found"."""

    def __init__(self, cmd: str) -> None:
        super().__init__(f"unsupported: {cmd} not found")
        self.cmd = cmd


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None  # None when killed at the timeout
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool  # stdout went past max_bytes; the rest was dropped
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    def describe_failure(self) -> str:
        """One line for a status or warning: what ran and how it failed."""
        cmd = " ".join(self.argv[:3])
        if self.timed_out:
            return f"{cmd}: killed after {self.duration_s:.1f} s timeout"
        err = self.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = f": {err[-1][:300]}" if err else ""
        return f"{cmd}: exit status {self.returncode}{detail}"


def _resolve(argv: Sequence[str]) -> list[str]:
    if not argv:
        raise ValueError("empty command")
    exe = shutil.which(argv[0])
    if exe is None:
        raise CommandNotFound(argv[0])
    return [exe, *argv[1:]]


def _popen(argv: Sequence[str], env: Mapping[str, str] | None) -> subprocess.Popen[bytes]:
    full = _resolve(argv)
    merged = None if env is None else {**os.environ, **env}
    try:
        if sys.platform == "win32":
            return subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=merged,
                creationflags=subprocess.CREATE_NEW_PROCESS_GROUP,
            )
        return subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=merged,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise CommandNotFound(argv[0]) from None
    except PermissionError as exc:
        raise CollectionError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None and sys.platform == "win32":
        return
    with contextlib.suppress(OSError):
        if sys.platform == "win32":
            subprocess.run(
                ["taskkill", "/T", "/F", "/PID", str(proc.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=5,
                check=False,
            )
            proc.kill()
        else:
            # The session leader's pid is the group id even after the leader exited.
            os.killpg(proc.pid, signal.SIGKILL)


class _Bounded:
    """Reads a pipe to its end in a thread, keeping at most ``limit`` bytes."""

    def __init__(self, pipe: IO[bytes], limit: int) -> None:
        self._pipe, self._limit = pipe, limit
        self.parts: list[bytes] = []
        self.kept = 0
        self.truncated = False
        self.thread = threading.Thread(target=self._run, name="casefile-cmd-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            fd = self._pipe.fileno()
            while chunk := os.read(fd, _CHUNK):
                room = self._limit - self.kept
                if room > 0:
                    self.parts.append(chunk[:room])
                    self.kept += min(room, len(chunk))
                if len(chunk) > room:
                    self.truncated = True

    def value(self) -> bytes:
        self.thread.join(_READER_GRACE_S)
        return b"".join(self.parts)


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    max_bytes: int,
    env: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
) -> CommandResult:
    """Run ``argv`` (no shell) for at most ``timeout`` s, keeping ``max_bytes`` of stdout.

    Raises CommandNotFound when the executable is missing, CommandCancelled when
    ``cancel`` was set meanwhile (the collection was given up: ``ctx.cancelled``); never
    raises for the command's own failure (see ``returncode``/``timed_out``).
    """
    started = time.monotonic()
    proc = _popen(argv, env)
    assert proc.stdout is not None and proc.stderr is not None
    out = _Bounded(proc.stdout, max_bytes)
    err = _Bounded(proc.stderr, _STDERR_MAX)
    timed_out = cancelled = False
    try:
        if cancel is None:
            proc.wait(max(0.0, timeout))
        else:
            cancelled = _wait_unless(proc, cancel, started + timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # Also reaps children the command left running in its group.
        _kill_group(proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    result = CommandResult(
        argv=tuple(argv),
        returncode=None if timed_out else proc.returncode,
        stdout=out.value(),
        stderr=err.value(),
        timed_out=timed_out,
        truncated=out.truncated,
        duration_s=time.monotonic() - started,
    )
    proc.stdout.close()
    proc.stderr.close()
    if cancelled:
        raise CommandCancelled(f"{' '.join(argv[:3])}: killed, the collection was given up")
    return result


def _wait_unless(proc: subprocess.Popen[bytes], cancel: threading.Event, end: float) -> bool:
    """Wait for ``proc`` until ``end`` (TimeoutExpired); True if ``cancel`` was set first."""
    while True:
        if cancel.is_set():
            return True
        left = end - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        try:
            proc.wait(min(_CANCEL_POLL_S, left))
            return False
        except subprocess.TimeoutExpired:
            continue


class LineStream:
    """Stdout of a running command, line by line (bytes, newline stripped).

    Iteration ends at EOF, at ``max_bytes`` (then ``truncated``), or when the watchdog
    kills the group at the deadline (then ``timed_out``). ``result`` is filled in when
    the ``stream_lines`` block ends; its ``stdout`` is empty (it was streamed).
    """

    def __init__(self, argv: Sequence[str], proc: subprocess.Popen[bytes], timeout: float, max_bytes: int) -> None:
        self.argv = tuple(argv)
        self._proc = proc
        self._max = max_bytes
        self._started = time.monotonic()
        self.read_bytes = 0
        self.truncated = False
        self._eof = False
        self._fired = threading.Event()
        assert proc.stderr is not None
        self._err = _Bounded(proc.stderr, _STDERR_MAX)
        self._timer = threading.Timer(max(0.0, timeout), self._expire)
        self._timer.daemon = True
        self._timer.start()
        self.result: CommandResult | None = None

    def _expire(self) -> None:
        self._fired.set()
        _kill_group(self._proc)

    @property
    def timed_out(self) -> bool:
        return self._fired.is_set()

    def __iter__(self) -> Iterator[bytes]:
        stdout = self._proc.stdout
        assert stdout is not None
        for line in stdout:
            self.read_bytes += len(line)
            if self.read_bytes > self._max:
                self.truncated = True
                return
            yield line.rstrip(b"\r\n")
        self._eof = True

    def _finish(self) -> CommandResult:
        self._timer.cancel()
        if self._eof and not self.timed_out:
            # EOF usually means it exited; let it, so its own exit status is reported.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(_READER_GRACE_S)
        _kill_group(self._proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        stderr = self._err.value()
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        # Killed by us after a truncation or early exit is not a command failure.
        rc = self._proc.returncode
        if rc is not None and rc < 0 and not self.timed_out:
            rc = 0 if self.truncated else rc
        self.result = CommandResult(
            argv=self.argv,
            returncode=None if self.timed_out else rc,
            stdout=b"",
            stderr=stderr,
            timed_out=self.timed_out,
            truncated=self.truncated,
            duration_s=time.monotonic() - self._started,
        )
        return self.result


@contextlib.contextmanager
def stream_lines(
    argv: Sequence[str],
    *,
    timeout: float,
    max_bytes: int,
    env: Mapping[str, str] | None = None,
) -> Iterator[LineStream]:
    """Start ``argv`` and yield a LineStream over its stdout; the group dies on exit."""
    proc = _popen(argv, env)
    stream = LineStream(argv, proc, timeout, max_bytes)
    try:
        yield stream
    finally:
        stream._finish()
