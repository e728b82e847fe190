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

Requests are answered by ``agent.daemon.requests``; bundles are uploaded or spooled by
``agent.daemon.delivery``. The flight recorder samples on its own thread
(``agent.daemon.recorder``) and checks the policy's triggers after each sample; a trigger
that fires seals a bundle of its own (``agent.daemon.capture``).

Collections and uploads run in a child process (``agent.daemon.worker``): the collection
machinery is never imported here, so the resident process stays small at rest and returns
to that size after every snapshot. Two children, each started when needed: one for live
snapshots (the collection and its upload), one for delivering the spool, so an engineer's
snapshot never waits behind a large spooled bundle crawling up a slow link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from typing import Any

from google.protobuf.message import DecodeError

from agent.daemon.capture import Capture
from agent.daemon.delivery import Delivery
from agent.daemon.doorbell import Doorbell, Parking
from agent.daemon.h2stream import BidiStream, RpcError
from agent.daemon.history import History
from agent.daemon.options import DaemonOptions
from agent.daemon.policy import Policy, load_policy
from agent.daemon.requests import RequestHandler
from agent.daemon.spool import Spool
from agent.daemon.worker import CollectionWorker
from agent.errors import CasefileError, TransportError
from agent.keys import SigningKey
from agent.state import AgentHome, Enrollment
from agent.transport.channel_proof import NONCE_BYTES, channel_message
from agent.transport.connect import parse_address
from agent.transport.live_states import LiveState, to_wire
from agent.untrusted import clean_text
from agent.version import __version__
from protos import collector_pb2

__all__ = ["AgentService", "DaemonOptions"]

log = logging.getLogger("casefile.agent.daemon")

_CONNECT_PATH = "/casefile.v1.Channel/Connect"
# Dial, TLS, hello → challenge → accepted. The collector gives each step 15 s; a
# collector that answers pings but not the hello (its handler stuck on its database)
# must not hold the agent: it dials again, perhaps to a healthy replica.
HANDSHAKE_TIMEOUT_S = 20.0


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
        self.worker = CollectionWorker(linger_s=self.options.worker_linger_s)  # live snapshots
        self.spool_worker = CollectionWorker(linger_s=self.options.worker_linger_s)  # spool delivery
        self._stop = asyncio.Event()
        self._outbox: asyncio.Queue[collector_pb2.AgentMessage] | None = None
        self._busy = asyncio.Lock()  # one collection at a time: bounded load on the customer's machine
        self._tasks: set[asyncio.Task[None]] = set()
        self.parking = Parking(
            parse_address(enrollment.collector), enrollment.ca_fingerprint, self.key, enrollment.agent_id,
            HANDSHAKE_TIMEOUT_S,
        )
        self.delivery = Delivery(
            home=home.root,
            enrollment=enrollment,
            history=self.history,
            spool=self.spool,
            spool_worker=lambda: self.spool_worker,
            stopping=self._stop.is_set,
        )
        self.requests = RequestHandler(
            home=home.root,
            agent_id=enrollment.agent_id,
            policy=self.policy,
            history=self.history,
            delivery=self.delivery,
            worker=self.worker,
            busy=self._busy,
            progress=self._progress,
        )

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
        """The flight recorder, on its own thread: a slow disk never delays the channel.

        The triggers are checked in the same thread after each sample (no thread of their
        own); a firing is handed to this loop for its capture."""
        if not self.policy.recorder_on:
            return None
        from agent.daemon.recorder import Recorder, Sample
        from agent.daemon.recorder_clock import clock_from_env

        stop = threading.Event()
        on_sample = None
        if self.policy.triggers_on:
            capture = Capture(
                home=self.home.root,
                agent_id=self.enrollment.agent_id,
                policy=self.policy,
                history=self.history,
                delivery=self.delivery,
                worker=self.worker,
                busy=self._busy,
                spawn=self._spawn,
            )
            watch = capture.watch()

            def on_sample(sample: Sample) -> None:
                for firing in watch.observe(sample.at, sample.metrics):
                    capture.fired(firing)

        def record() -> None:
            try:
                # The real clock, unless a test set CASEFILE_TEST_MODE=1 and a virtual one.
                clock = clock_from_env()
                recorder = Recorder(self.home.root, self.policy.recorder_settings(), clock=clock)
            except Exception as exc:  # an unwritable home: the service still serves snapshots
                log.error("flight recorder not started: %s", exc)
                return
            try:
                recorder.run(stop, on_sample)
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
            accepted = parked = False
            try:
                accepted, parked = await self._session_unless_stopped()
            except RpcError as exc:
                level = logging.ERROR if exc.code == "ALREADY_EXISTS" else logging.WARNING
                log.log(level, "channel to %s: %s: %s", self.enrollment.collector, exc.code, exc.details)
            except (TransportError, OSError) as exc:
                log.warning("channel to %s: %s", self.enrollment.collector, exc)
            failures = 0 if accepted else failures + 1
            if parked and not self._stop.is_set() and await self.parking.wait(self._stop):
                continue  # rung: the stream at once, the doorbell kept until it is accepted
            if self._stop.is_set():
                break
            ceiling = min(self.options.backoff_cap_s, self.options.backoff_base_s * 2 ** min(failures, 16))
            delay = random.uniform(0, ceiling)
            log.info("reconnecting in %.1f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        await self.parking.unpark()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(self.worker.close(), self.spool_worker.close())

    async def _answer(self, request: collector_pb2.SnapshotRequest) -> None:
        self.parking.answering += 1
        try:
            await self.requests.handle(request)
        finally:
            self.parking.answering -= 1
            self.parking.touch()

    async def _open(self) -> BidiStream:
        return await BidiStream.open(
            parse_address(self.enrollment.collector),
            _CONNECT_PATH,
            pin=self.enrollment.ca_fingerprint,
            user_agent=f"casefile-agent/{__version__}",
            keepalive_s=self.options.keepalive_s,
            keepalive_timeout_s=self.options.keepalive_timeout_s,
        )

    async def _session_unless_stopped(self) -> tuple[bool, bool]:
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
        return (False, False) if session.cancelled() else session.result()

    async def _session(self) -> tuple[bool, bool]:
        """One stream's life: (the collector accepted it (resets the backoff), it ended
        because the agent parked)."""
        accepted = parked = False
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
            await self.parking.unpark()  # reachable by the stream now
            outbox: asyncio.Queue[collector_pb2.AgentMessage] = asyncio.Queue()
            self._outbox = outbox
            writer = asyncio.create_task(self._write(call, outbox))
            self._spawn(self.delivery.deliver_spool())
            stopper = asyncio.create_task(self._stop.wait())
            self.parking.touch()
            offer = second.accepted
            waits: set[asyncio.Future[Any]] = {stopper}
            parker: asyncio.Task[Doorbell] | None = None
            if 0 < offer.doorbell_port <= 65535 and offer.park_after_s and self.options.park:  # a uint32 on the wire
                parker = asyncio.create_task(self.parking.when_idle(offer.doorbell_port, offer.park_after_s))
                waits.add(parker)
            reader: asyncio.Future[bytes | None] | None = None
            try:
                while True:
                    if reader is None:
                        reader = asyncio.ensure_future(call.read())
                    done, _ = await asyncio.wait({reader, *waits}, return_when=asyncio.FIRST_COMPLETED)
                    if done & waits - {parker}:  # stopping, or the collector never ended the parked stream
                        reader.cancel()
                        break
                    if parker is not None and parker in done:
                        # Parked: the stream ends from this side; what the collector sent
                        # before it saw the end is still read (and answered) below.
                        self.parking.bell, parked = parker.result(), True
                        # Nothing more goes up: a write on the half-closed stream would reset
                        # it, losing what the collector sent before it saw the end. Progress
                        # of a request read from here on is the collector's to learn from Ingest.
                        self._outbox = None
                        waits.remove(parker)
                        waits.add(asyncio.ensure_future(asyncio.sleep(HANDSHAKE_TIMEOUT_S)))
                        parker = None
                        with contextlib.suppress(RpcError):
                            await call.end_writes()
                    if not reader.done():
                        continue
                    done_reading, reader = reader, None
                    try:
                        msg = _parse(done_reading.result())
                    except RpcError as exc:
                        # An accepted stream that ends — the collector's connection-age
                        # GOAWAY, a replica stopping, a load balancer moving us — is a
                        # normal reconnect: the backoff starts again from its base.
                        log.info("channel ended (%s: %s); reconnecting", exc.code, exc.details)
                        break
                    if msg is None:
                        if not parked:
                            log.warning("collector closed the channel")
                        break
                    self.parking.touch()
                    kind = msg.WhichOneof("msg")
                    if kind == "snapshot_request":
                        self._spawn(self._answer(msg.snapshot_request))
                        if parked:  # sent while the stream was closing: back on it at once
                            await self.parking.unpark()
                    elif kind == "probe" and not parked:  # the collector asks whether this stream is still alive
                        answer = collector_pb2.ProbeAnswer(nonce=msg.probe.nonce)
                        outbox.put_nowait(collector_pb2.AgentMessage(probe_answer=answer))
            finally:
                self._outbox = None
                for waiting in waits - {parker}:
                    waiting.cancel()
                if parker is not None:
                    parker.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        bell = await parker  # parked just as the stream ended
                        if self.parking.bell is None:
                            self.parking.bell, parked = bell, True
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, RpcError):
                    await writer
        finally:
            await call.close()
        return accepted, parked

    async def _handshake(self, call: BidiStream) -> collector_pb2.CollectorMessage:
        """Hello, the signed challenge; the collector's ChannelAccepted."""
        agent_id = self.enrollment.agent_id
        # What this machine's policy allows a live request, so an engineer is offered only that
        # (the agent still judges every request against it).
        policy = collector_pb2.LivePolicy(
            allowed_scopes=list(self.policy.allowed_scopes), max_logs_window_s=self.policy.max_logs_window_s
        )
        hello = collector_pb2.ChannelHello(agent_id=agent_id, agent_version=__version__, policy=policy)
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

    def _progress(self, request_id: str, state: LiveState, detail: str, bundle_id: str) -> None:
        outbox = self._outbox
        if outbox is not None:  # no stream: the collector learns the outcome from Ingest
            self.parking.touch()
            outbox.put_nowait(
                collector_pb2.AgentMessage(
                    progress=collector_pb2.SnapshotProgress(
                        request_id=request_id,
                        state=state,  # for collectors of earlier releases (live_states)
                        live_state=to_wire(state),
                        detail=detail,
                        bundle_id=bundle_id,
                    )
                )
            )


def _parse(data: bytes | None) -> collector_pb2.CollectorMessage | None:
    """A message from the collector; None when it ended the call with OK."""
    if data is None:
        return None
    try:
        return collector_pb2.CollectorMessage.FromString(data)
    except DecodeError as exc:
        raise RpcError("INTERNAL", f"unreadable CollectorMessage ({len(data)} bytes): {exc}") from None
