"""The agent service: hold the Channel, answer snapshot requests, deliver the spool.

One asyncio loop. ``AgentService.run`` dials the enrolled collector (TLS, pinned
certificate), opens ``Channel.Connect`` (gRPC over ``h2``, not grpcio: see
``agent.daemon.h2stream``), proves the agent's key (see
``agent.transport.channel_proof``) and then waits for ``SnapshotRequest``s. When the stream
cannot be opened or breaks — collector restarted, network gone, UNAVAILABLE or
CANCELLED — it waits a random time in ``[0, min(cap, base·2^n)]`` (exponential backoff
with full jitter, so a thousand agents do not reconnect in step) and tries again,
forever: a collector outage never ends the service. Only SIGTERM/SIGINT do. A stream
that was accepted and then ends (the collector's maximum connection age, a replica
shutting down) resets ``n``: it is rebalancing, not an outage.

Per request, in order: an id that is not an id (``agent.untrusted``) → ``refused``
(answered ``denied``; nothing is named after it); seen before → ``denied`` (duplicate;
at most once per id), past ``expires_at_unix`` → ``expired``, outside the policy → ``denied by policy:
<rule>``; else recorded as accepted, collected (kind "live", with the request id in the
manifest) as ``collecting``, uploaded through Ingest as ``uploading``. The collector
reports ``done`` once it has stored the bundle. A bundle that cannot be uploaded goes
to the spool and is delivered after the next accepted connection.

Collections and uploads run in a child process (``agent.daemon.worker``): the collection
machinery is never imported here, so the resident process stays small at rest and returns
to that size after every snapshot. Two children, each started when needed: one for live
snapshots (the collection and its upload), one for delivering the spool, so an engineer's
snapshot never waits behind a large spooled bundle crawling up a slow link.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from agent.daemon.h2stream import BidiStream, RpcError
from agent.daemon.history import History
from agent.daemon.live_spec import check_live_spec
from agent.daemon.policy import Policy, collectors_for, load_policy
from agent.daemon.spool import Spool
from agent.daemon.worker import CollectionWorker, LiveBundle
from agent.errors import CasefileError, TransportError
from agent.keys import SigningKey
from agent.scopes import reads_logs
from agent.state import AgentHome, Enrollment
from agent.transport.channel_proof import NONCE_BYTES, channel_message
from agent.transport.connect import parse_address
from agent.transport.live_states import LiveState
from agent.untrusted import REQUEST_ID_MAX, clean_text, describe_id, request_id_problem
from agent.version import __version__
from protos import collector_pb2

__all__ = ["AgentService", "DaemonOptions", "run", "run_cli"]

log = logging.getLogger("casefile.agent.daemon")

_CONNECT_PATH = "/casefile.v1.Channel/Connect"
# The collector's ping policy: more often than every 20 s and it ends the connection.
_MIN_KEEPALIVE_S = 20.0
# Dial, TLS, hello → challenge → accepted. The collector gives each step 15 s; a
# collector that answers pings but not the hello (its handler stuck on its database)
# must not hold the agent: it dials again, perhaps to a healthy replica.
HANDSHAKE_TIMEOUT_S = 20.0
_UPLOAD_ATTEMPTS = 3  # then spool: the spool retries on every reconnect, for ever
_SCOPES_RECORDED = 8  # of a request's scopes, the history keeps this many (four built in, plus plugins)


@dataclass(frozen=True)
class DaemonOptions:
    """Backoff in seconds; tests shorten it via $CASEFILE_AGENT_BACKOFF_MAX/_BASE.

    ``worker_linger_s`` ($CASEFILE_AGENT_WORKER_LINGER): how long the collection child
    stays after a snapshot for the next one; 0 ends it after each.

    Keepalive ($CASEFILE_AGENT_KEEPALIVE_S, $CASEFILE_AGENT_KEEPALIVE_TIMEOUT_S): a ping
    every 30 s keeps NAT mappings open, and one unanswered for 10 s means the collector
    or the path to it is gone: the stream is dropped and dialled again. The collector
    permits a ping every 20 s or slower (more often, it ends the connection), so the
    environment cannot ask for less than 20 s.
    """

    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    worker_linger_s: float = 60.0
    keepalive_s: float = 30.0
    keepalive_timeout_s: float = 10.0

    @classmethod
    def from_env(cls) -> DaemonOptions:
        base = float(os.environ.get("CASEFILE_AGENT_BACKOFF_BASE", "1.0"))
        cap = float(os.environ.get("CASEFILE_AGENT_BACKOFF_MAX", "60.0"))
        linger = float(os.environ.get("CASEFILE_AGENT_WORKER_LINGER", "60.0"))
        keepalive = float(os.environ.get("CASEFILE_AGENT_KEEPALIVE_S", "30.0"))
        keepalive_timeout = float(os.environ.get("CASEFILE_AGENT_KEEPALIVE_TIMEOUT_S", "10.0"))
        return cls(
            backoff_base_s=max(0.01, base),
            backoff_cap_s=max(0.01, cap),
            worker_linger_s=max(0.0, linger),
            keepalive_s=max(_MIN_KEEPALIVE_S, keepalive),
            keepalive_timeout_s=max(1.0, keepalive_timeout),
        )


class AgentService:
    def __init__(self, home: AgentHome, options: DaemonOptions | None = None) -> None:
        enrollment = home.enrollment()
        if enrollment is None:
            raise CasefileError(f"agent in {home.root} is not enrolled: run 'casefile agent enroll' first")
        self.home = home
        self.enrollment: Enrollment = enrollment
        self.options = options or DaemonOptions.from_env()
        self.key: SigningKey = home.key()
        self.policy: Policy = load_policy(home.root)
        for note in self.policy.notes:
            log.warning("%s", note)
        self.history = History(home.root / "history.jsonl")
        self.spool = Spool(
            home.root / "spool", max_bytes=self.policy.spool_max_bytes, max_bundles=self.policy.spool_max_bundles
        )
        self.work = home.root / "work"
        self.worker = CollectionWorker(linger_s=self.options.worker_linger_s)  # live snapshots
        self.spool_worker = CollectionWorker(linger_s=self.options.worker_linger_s)  # spool delivery
        self._stop = asyncio.Event()
        self._outbox: asyncio.Queue[collector_pb2.AgentMessage] | None = None
        self._busy = asyncio.Lock()  # one collection at a time: bounded load on the customer's machine
        self._spool_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        self._stop.set()

    # -- connection loop -----------------------------------------------------------

    async def run(self) -> None:
        recorder = self._start_recorder()
        try:
            await self._serve()
        finally:
            if recorder is not None:
                recorder[0].set()
                await asyncio.to_thread(recorder[1].join, 15)

    def _start_recorder(self) -> tuple[threading.Event, threading.Thread] | None:
        """The flight recorder, on its own thread: a slow disk never delays the channel."""
        if not self.policy.recorder_on:
            return None
        from agent.daemon.recorder import Recorder

        stop = threading.Event()

        def record() -> None:
            try:
                recorder = Recorder(self.home.root, self.policy.recorder_settings())
            except Exception as exc:  # an unwritable home: the service still serves snapshots
                log.error("flight recorder not started: %s", exc)
                return
            try:
                recorder.run(stop)
            except Exception:
                log.exception("flight recorder stopped")
            finally:
                recorder.close()

        thread = threading.Thread(target=record, name="recorder", daemon=True)
        thread.start()
        return stop, thread

    async def _serve(self) -> None:
        failures = 0
        while not self._stop.is_set():
            accepted = False
            try:
                accepted = await self._session_unless_stopped()
            except RpcError as exc:
                level = logging.ERROR if exc.code == "ALREADY_EXISTS" else logging.WARNING
                log.log(level, "channel to %s: %s: %s", self.enrollment.collector, exc.code, exc.details)
            except (TransportError, OSError) as exc:
                log.warning("channel to %s: %s", self.enrollment.collector, exc)
            failures = 0 if accepted else failures + 1
            if self._stop.is_set():
                break
            ceiling = min(self.options.backoff_cap_s, self.options.backoff_base_s * 2 ** min(failures, 16))
            delay = random.uniform(0, ceiling)
            log.info("reconnecting in %.1f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(self.worker.close(), self.spool_worker.close())

    async def _open(self) -> BidiStream:
        return await BidiStream.open(
            parse_address(self.enrollment.collector),
            _CONNECT_PATH,
            pin=self.enrollment.ca_fingerprint,
            user_agent=f"casefile-agent/{__version__}",
            keepalive_s=self.options.keepalive_s,
            keepalive_timeout_s=self.options.keepalive_timeout_s,
        )

    async def _session_unless_stopped(self) -> bool:
        """``_session``, given up as soon as the service is told to stop, even mid-handshake."""
        session = asyncio.create_task(self._session())
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not session.done() and self._outbox is not None:
                await asyncio.wait({session}, timeout=10)  # accepted: it ends itself on stop
            if not session.done():
                session.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await session
        return False if session.cancelled() else session.result()

    async def _session(self) -> bool:
        """One stream's life; True if the collector accepted it (resets the backoff)."""
        accepted = False
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                call = await self._open()
        except TimeoutError:
            raise RpcError("DEADLINE_EXCEEDED", f"no connection within {HANDSHAKE_TIMEOUT_S:g} s") from None
        try:
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                    second = await self._handshake(call)
            except TimeoutError:
                raise RpcError(
                    "DEADLINE_EXCEEDED", f"the collector did not finish the handshake within {HANDSHAKE_TIMEOUT_S:g} s"
                ) from None
            accepted = True
            log.info("connected to %s as %s", self.enrollment.collector, clean_text(second.accepted.agent_id, 64))
            outbox: asyncio.Queue[collector_pb2.AgentMessage] = asyncio.Queue()
            self._outbox = outbox
            writer = asyncio.create_task(self._write(call, outbox))
            self._spawn(self._deliver_spool())
            stopper = asyncio.create_task(self._stop.wait())
            try:
                while True:
                    reader = asyncio.ensure_future(call.read())
                    done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if stopper in done:
                        reader.cancel()
                        break
                    try:
                        msg = _parse(reader.result())
                    except RpcError as exc:
                        # An accepted stream that ends — the collector's connection-age
                        # GOAWAY, a replica stopping, a load balancer moving us — is a
                        # normal reconnect: the backoff starts again from its base.
                        log.info("channel ended (%s: %s); reconnecting", exc.code, exc.details)
                        break
                    if msg is None:
                        log.warning("collector closed the channel")
                        break
                    kind = msg.WhichOneof("msg")
                    if kind == "snapshot_request":
                        self._spawn(self._handle(msg.snapshot_request))
                    elif kind == "probe":  # the collector asks whether this stream is still alive
                        answer = collector_pb2.ProbeAnswer(nonce=msg.probe.nonce)
                        outbox.put_nowait(collector_pb2.AgentMessage(probe_answer=answer))
            finally:
                self._outbox = None
                stopper.cancel()
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, RpcError):
                    await writer
        finally:
            await call.close()
        return accepted

    async def _handshake(self, call: BidiStream) -> collector_pb2.CollectorMessage:
        """Hello, the signed challenge; the collector's ChannelAccepted."""
        agent_id = self.enrollment.agent_id
        hello = collector_pb2.ChannelHello(agent_id=agent_id, agent_version=__version__)
        await call.write(collector_pb2.AgentMessage(hello=hello).SerializeToString())
        first = _parse(await call.read())
        if first is None or first.WhichOneof("msg") != "challenge":
            raise TransportError("collector did not send a challenge", peer=self.enrollment.collector)
        nonce = bytes(first.challenge.nonce)
        if len(nonce) != NONCE_BYTES:  # the key signs exactly what the protocol says, nothing a peer chose more of
            raise TransportError(
                f"collector sent a {len(nonce)}-byte challenge (expected {NONCE_BYTES})", peer=self.enrollment.collector
            )
        signature = self.key.sign(channel_message(nonce, agent_id))
        response = collector_pb2.ChallengeResponse(signature=signature)
        await call.write(collector_pb2.AgentMessage(challenge_response=response).SerializeToString())
        second = _parse(await call.read())
        if second is None or second.WhichOneof("msg") != "accepted":
            raise TransportError("collector did not accept the channel", peer=self.enrollment.collector)
        return second

    async def _write(self, call: BidiStream, outbox: asyncio.Queue[collector_pb2.AgentMessage]) -> None:
        while True:
            await call.write((await outbox.get()).SerializeToString())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _progress(self, request_id: str, state: LiveState, detail: str = "", bundle_id: str = "") -> None:
        outbox = self._outbox
        if outbox is not None:  # no stream: the collector learns the outcome from Ingest
            outbox.put_nowait(
                collector_pb2.AgentMessage(
                    progress=collector_pb2.SnapshotProgress(
                        request_id=request_id, state=state, detail=detail, bundle_id=bundle_id
                    )
                )
            )

    # -- requests ------------------------------------------------------------------

    async def _handle(self, req: collector_pb2.SnapshotRequest) -> None:
        # Every field is the collector's word, and a collector holding the pinned key may be
        # stolen: the id is checked before any use, the text is cleaned before it is recorded
        # or logged, and the work folder is named here, never after the request.
        scopes = tuple(req.scopes) or ("facts",)
        since = int(req.since_seconds)
        who = {
            "request_id": req.request_id,
            "requested_by": clean_text(req.requested_by, 200),
            "reason": clean_text(req.reason, 500),
            "scopes": [clean_text(s, 40) for s in scopes[:_SCOPES_RECORDED]],
            "since_s": since,
        }
        problem = request_id_problem(req.request_id)
        if problem is not None:
            await self._refuse(req, problem, who)
            return
        async with self._busy:
            if await asyncio.to_thread(self.history.seen, req.request_id):
                detail = f"duplicate request id {req.request_id!r}: already handled once"
                await asyncio.to_thread(lambda: self.history.append("duplicate", detail=detail, **who))
                self._progress(req.request_id, LiveState.DENIED, detail)
                return
            if req.expires_at_unix and dt.datetime.now(dt.UTC).timestamp() > req.expires_at_unix:
                detail = f"request expired at {_unix_time(req.expires_at_unix)}"
                await asyncio.to_thread(lambda: self.history.append("expired", detail=detail, **who))
                self._progress(req.request_id, LiveState.EXPIRED, detail)
                return
            hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
            recent = await asyncio.to_thread(self.history.accepted_since, hour_ago)
            rule = self.policy.denial(scopes, since, recent)
            checked = None if rule else check_live_spec(scopes, req.spec_envelope, *self._spec_trust())
            if checked is not None:  # a spec: what it is goes in the history, allowed or not
                who["spec"] = checked.record
                rule = checked.denial
            if rule is not None:
                detail = f"denied by policy: {rule}"
                await asyncio.to_thread(lambda: self.history.append("denied", detail=detail, **who))
                self._progress(req.request_id, LiveState.DENIED, detail)
                log.info("request %s from %s %s", req.request_id, who["requested_by"], detail)
                return
            # No window named means the policy's largest, never the collector's default.
            window = self.policy.logs_window(since) if reads_logs(scopes) else None
            if window is not None:
                who["since_s"] = window
            await asyncio.to_thread(lambda: self.history.append("accepted", **who))
            self._progress(req.request_id, LiveState.COLLECTING, f"scopes {', '.join(scopes)}")
            try:
                work = await asyncio.to_thread(self._work_dir)
            except OSError as exc:  # a full or read-only disk: answered like any failed collection
                detail = f"collection failed: no work folder under {self.work}: {exc}"
                await asyncio.to_thread(lambda: self.history.append("failed", detail=detail, **who))
                self._progress(req.request_id, LiveState.FAILED, detail)
                return
            try:
                bundle = await self.worker.collect(
                    home=self.home.root,
                    agent_id=self.enrollment.agent_id,
                    request_id=req.request_id,
                    collectors=collectors_for(scopes),
                    since_s=window,
                    profile=self.policy.profile,
                    output_dir=work,
                    spec=(req.spec_envelope, self.policy.spec_signers) if checked is not None else None,
                )
            except asyncio.CancelledError:
                # The agent is stopping: the child was ended, nothing will be uploaded.
                self.history.append("failed", detail="interrupted: the agent stopped during the collection", **who)
                shutil.rmtree(work, ignore_errors=True)
                raise
            except Exception as exc:
                detail = f"collection failed: {exc}"
                log.exception("request %s: %s", req.request_id, detail)
                await asyncio.to_thread(lambda: self.history.append("failed", detail=detail, **who))
                self._progress(req.request_id, LiveState.FAILED, detail)
                shutil.rmtree(work, ignore_errors=True)
                return
        self._progress(req.request_id, LiveState.UPLOADING, f"bundle {bundle.bundle_id}, {bundle.size:,} bytes")
        ids = {**who, "bundle_id": bundle.bundle_id, "sha256": bundle.sha256}
        try:
            await self._upload(bundle.path, bundle.bundle_id)
        except asyncio.CancelledError:
            # The agent is stopping mid-upload: keep the bundle for the next start.
            self._spool(bundle, req.request_id, ids, "the agent stopped during the upload; delivered on restart")
            raise
        except CasefileError as exc:
            detail = f"collector unreachable ({exc}); spooled for delivery on reconnect"
            async with self._spool_lock:
                await asyncio.to_thread(self._spool, bundle, req.request_id, ids, detail)
            log.warning("request %s: %s", req.request_id, detail)
            self._progress(req.request_id, LiveState.UPLOADING, detail, bundle.bundle_id)
        else:
            await asyncio.to_thread(lambda: self.history.append("done", **ids))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _spec_trust(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.policy.spec_signers, self.policy.live_specs

    def _work_dir(self) -> Path:
        """A fresh folder for one collection, under ``<home>/work``, named by us."""
        self.work.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(prefix="live-", dir=self.work))

    async def _refuse(self, req: collector_pb2.SnapshotRequest, problem: str, who: dict[str, Any]) -> None:
        """A request whose id is no id: recorded and answered, never acted on."""
        entry = {**who, "request_id": "", "bad_request_id": describe_id(req.request_id)}
        detail = f"refused: {problem}"
        await asyncio.to_thread(lambda: self.history.append("refused", detail=detail, **entry))
        log.warning("refused a request from the collector: %s", problem)
        # Echoed (cut) so the collector can tell which request it was; it is not used here.
        self._progress(req.request_id[: 2 * REQUEST_ID_MAX], LiveState.DENIED, detail)

    def _record(self, outcome: str, ids: dict[str, Any], detail: str) -> None:
        self.history.append(outcome, detail=detail, **ids)

    def _spool(self, bundle: LiveBundle, request_id: str, ids: dict[str, Any], detail: str) -> None:
        """Keep an undelivered bundle in the spool; record it, and what the spool's bound pushed out."""
        _, dropped = self.spool.add(
            bundle.path, bundle_id=bundle.bundle_id, request_id=request_id, sha256=bundle.sha256
        )
        self.history.append("spooled", detail=detail, **ids)
        bound = f"spool bound reached ({self.spool.max_bundles} bundles, {self.spool.max_bytes} bytes)"
        for old in dropped:
            self._record(
                "dropped",
                {"request_id": old.request_id, "bundle_id": old.bundle_id, "sha256": old.sha256},
                f"{bound}: oldest bundle dropped",
            )

    async def _upload(self, path: Path, bundle_id: str, worker: CollectionWorker | None = None) -> None:
        await (worker or self.worker).upload(
            home=self.home.root,
            agent_id=self.enrollment.agent_id,
            collector=self.enrollment.collector,
            ca_fingerprint=self.enrollment.ca_fingerprint,
            path=path,
            bundle_id=bundle_id,
            attempts=_UPLOAD_ATTEMPTS,
        )

    async def _deliver_spool(self) -> None:
        async with self._spool_lock:
            for item in await asyncio.to_thread(self.spool.pending):
                if self._stop.is_set():
                    return
                try:
                    await self._upload(item.path, item.bundle_id, self.spool_worker)
                except CasefileError as exc:
                    log.warning("spooled bundle %s not delivered yet: %s", item.bundle_id, exc)
                    return
                await asyncio.to_thread(self.spool.remove, item)
                await asyncio.to_thread(
                    self._record,
                    "delivered",
                    {"request_id": item.request_id, "bundle_id": item.bundle_id, "sha256": item.sha256},
                    "",
                )
                log.info("spooled bundle %s delivered", item.bundle_id)


def _unix_time(seconds: int) -> str:
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()
    except (OverflowError, ValueError, OSError):  # out of datetime's range
        return f"unix time {seconds}"


def _parse(data: bytes | None) -> collector_pb2.CollectorMessage | None:
    """A message from the collector; None when it ended the call with OK."""
    if data is None:
        return None
    try:
        return collector_pb2.CollectorMessage.FromString(data)
    except DecodeError as exc:
        raise RpcError("INTERNAL", f"unreadable CollectorMessage ({len(data)} bytes): {exc}") from None


def run_cli() -> None:
    """``casefile-agent [--home DIR]``: the service entry point, without the CLI's typer and rich.

    The systemd unit starts this one: it keeps the resident process small.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="casefile-agent", description="Casefile agent service (live snapshots).")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="agent state folder (default: $CASEFILE_HOME, else /var/lib/casefile for root, "
        "~/.local/share/casefile otherwise)",
    )
    run(parser.parse_args().home)


def run(home: Path | None = None, options: DaemonOptions | None = None) -> None:
    """``casefile agent run``: serve until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=os.environ.get("CASEFILE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def main() -> None:
        service = AgentService(AgentHome(home), options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        log.info("agent %s serving (home %s)", service.enrollment.agent_id, service.home.root)
        await service.run()
        log.info("agent stopped")

    asyncio.run(main())
