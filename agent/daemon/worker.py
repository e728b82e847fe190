"""Live collections and uploads run in a child process, so the resident daemon stays small.

Why: the daemon lives for months holding one stream. A collection needs the collectors,
redaction, the bundle writer, zstandard and psutil; an upload needs a second gRPC
channel; both grow the heap. In the daemon that memory would stay for good — Python
never unloads a module, and a freed heap is seldom handed back to the OS — so one
snapshot cost the customer ~11 MiB (measured: 58 → 69 MiB RSS) for the life of the
service. In a child it is all returned when the child exits, and the daemon at rest
holds only h2, the generated Channel messages, its key and the stream (see
``agent.daemon.h2stream`` for why that stream does not use grpcio).

The child, ``python -m agent.daemon.execute``, is started on the first request and kept
``linger_s`` after the last one, so an engineer's follow-up snapshots do not pay its
start again (interpreter and imports, ~0.2 s of CPU); then it is told to exit (EOF on
its stdin). One request at a time per child (the daemon keeps two: live snapshots, spool
delivery). A child that dies is replaced on the next request;
the request it was serving fails (``CollectionError``, ``UploadError``). When the daemon
stops during a request, the child is terminated.

Protocol, one JSON object per line, ``op`` first. ``{"op": "collect", "home",
"agent_id", "request_id", "collectors", "since_s", "profile", "output_dir", "trigger",
"history_s", "trigger_facts"}`` →
``{"bundle": {"path", "bundle_id", "size", "sha256"}}``; ``{"op": "upload", "home",
"agent_id", "collector", "ca_fingerprint", "path", "bundle_id", "attempts"}`` →
``{"uploaded": "<bundle id>"}``; either may answer ``{"error": "<message>"}``. The
child's stdout carries nothing else; its log lines go to the daemon's stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import CasefileError, CollectionError, UploadError

__all__ = ["WORKER_COMMAND", "CollectionWorker", "LiveBundle", "new_work_dir"]

log = logging.getLogger("casefile.agent.daemon")

# -P: the daemon's working directory must not shadow a module in the child, which runs as
# the daemon's user (root under the unit) and starts in that directory.
# In the single file (``make dist``) there is no interpreter to pass -m to: the file itself
# starts the child when its first argument is ``agent-worker`` (agent/single_file.py).
WORKER_COMMAND: tuple[str, ...] = (
    (sys.executable, "agent-worker")
    if getattr(sys, "frozen", False)
    else (sys.executable, "-P", "-m", "agent.daemon.execute")
)
_EXIT_GRACE_S = 10.0  # a child told to exit (EOF, SIGTERM) gets this long before SIGKILL
_KILLED_WAIT_S = 5.0  # after SIGKILL: a child stuck in the kernel is given up on, not waited for
_REPLY_LIMIT = 1 << 20  # longest reply line; replies are small, an error message may not be
# No answer within this long means the child is wedged as a whole (every collector has a
# budget and the run a total one): it is killed and the request fails.
COLLECT_DEADLINE_S = 300.0
UPLOAD_DEADLINE_S = 900.0



def new_work_dir(work: Path, prefix: str) -> Path:
    """A fresh folder for one collection under ``work`` (``<home>/work``), named by the agent,
    never after anything a collector sent."""
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=work))

@dataclass(frozen=True)
class LiveBundle:
    """A bundle the child wrote; ``sha256`` and ``size`` are of the whole file."""

    path: Path
    bundle_id: str
    size: int
    sha256: str


class CollectionWorker:
    """The daemon's handle on its collection child: started on demand, retired when idle."""

    def __init__(self, *, linger_s: float, command: Sequence[str] = WORKER_COMMAND) -> None:
        self.linger_s = linger_s
        self.command = tuple(command)
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._retire: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The running child's pid, or None when there is none."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def collect(
        self,
        *,
        home: Path,
        agent_id: str,
        request_id: str,
        collectors: tuple[str, ...],
        since_s: int | None,
        profile: str,
        output_dir: Path,
        trigger: str = "",
        history_s: int | None = None,
        spec: tuple[bytes, tuple[str, ...]] | None = None,
        trigger_facts: dict[str, str | float] | None = None,
    ) -> LiveBundle:
        """Collect ``collectors`` into a signed bundle in ``output_dir``, in the child: kind
        "live", or "triggered" when ``trigger`` names the policy's trigger that fired
        (``trigger_facts``: its ``when``, ``detail`` and ``at``, for ``Snapshot.trigger``);
        ``spec``: a signed collection spec and the signers trusted for it, run as well."""
        request: dict[str, object] = {
            "op": "collect",
            "home": str(home),
            "agent_id": agent_id,
            "request_id": request_id,
            "collectors": list(collectors),
            "since_s": since_s,
            "profile": profile,
            "output_dir": str(output_dir),
            "trigger": trigger,
            "history_s": history_s,
            "trigger_facts": trigger_facts or {},
        }
        if spec is not None:
            request["spec_envelope"] = spec[0].decode("ascii", "replace")
            request["spec_signers"] = list(spec[1])
        reply = await self._request(request, CollectionError, COLLECT_DEADLINE_S)
        try:
            b = reply["bundle"]
            return LiveBundle(Path(b["path"]), str(b["bundle_id"]), int(b["size"]), str(b["sha256"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CollectionError(f"collection worker sent a malformed reply: {exc!r}") from None

    async def upload(
        self,
        *,
        home: Path,
        agent_id: str,
        collector: str,
        ca_fingerprint: str | None,
        path: Path,
        bundle_id: str,
        attempts: int,
    ) -> None:
        """Upload ``path`` through Ingest (resuming), in the child; ``UploadError`` when it cannot."""
        request = {
            "op": "upload",
            "home": str(home),
            "agent_id": agent_id,
            "collector": collector,
            "ca_fingerprint": ca_fingerprint,
            "path": str(path),
            "bundle_id": bundle_id,
            "attempts": attempts,
        }
        await self._request(request, UploadError, UPLOAD_DEADLINE_S)

    async def _request(
        self, request: Mapping[str, object], error: type[CasefileError], deadline_s: float
    ) -> dict[str, Any]:
        async with self._lock:
            if self._retire is not None:
                self._retire.cancel()
                self._retire = None
            try:
                reply = await asyncio.wait_for(self._ask(request), deadline_s)
            except TimeoutError:
                await self._stop(terminate=True)
                raise error(f"collection worker did not answer within {deadline_s:g} s; it was stopped") from None
            except asyncio.CancelledError:
                await self._stop(terminate=True)
                raise
            except CasefileError as exc:
                raise error(str(exc)) from None
            finally:
                if self._proc is not None:
                    self._retire = asyncio.create_task(self._retire_later())
        if "error" in reply:
            raise error(str(reply["error"]))
        return reply

    async def close(self) -> None:
        """Retire the child now (the daemon is stopping)."""
        if self._retire is not None:
            self._retire.cancel()
            self._retire = None
        async with self._lock:
            await self._stop(terminate=False)

    async def _ask(self, request: Mapping[str, object]) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            try:
                proc = self._proc = await asyncio.create_subprocess_exec(
                    *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=_REPLY_LIMIT
                )
            except OSError as exc:
                raise CasefileError(f"cannot start the collection worker {self.command[0]}: {exc}") from None
            log.debug("collection worker %d started", proc.pid)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request).encode("utf-8") + b"\n")
            await proc.stdin.drain()
            line = await proc.stdout.readline()
        except (BrokenPipeError, ConnectionResetError):
            line = b""
        except (ValueError, OSError) as exc:  # a reply over the limit, a broken pipe: out of step now
            await self._stop(terminate=True)
            raise CasefileError(f"collection worker reply unreadable: {exc}") from None
        if not line:  # the child died: report how, and start a fresh one next time
            await self._stop(terminate=False)
            raise CasefileError(f"collection worker exited with code {proc.returncode} before answering")
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            await self._stop(terminate=True)
            raise CasefileError(f"collection worker sent a malformed reply: {line[:200]!r}")
        return reply

    async def _retire_later(self) -> None:
        await asyncio.sleep(self.linger_s)
        async with self._lock:
            if self._retire is not asyncio.current_task():
                return  # a request came meanwhile and scheduled its own retirement
            self._retire = None  # from here on nothing cancels this task mid-stop
            await self._stop(terminate=False)

    async def _stop(self, *, terminate: bool) -> None:
        """End the child: EOF on its stdin, and SIGTERM first when it is busy; SIGKILL after the grace.

        A child that has exited already is only waited for: signalling it would reap it
        behind asyncio's back and lose its exit code.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        if terminate and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), _EXIT_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            try:
                await asyncio.wait_for(proc.wait(), _KILLED_WAIT_S)
            except TimeoutError:
                log.error("collection worker %d does not exit even when killed (stuck in the kernel?); left", proc.pid)
                return
        log.debug("collection worker %d exited with code %s", proc.pid, proc.returncode)
