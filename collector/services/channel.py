"""Channel: the stream an enrolled agent holds open so engineers can reach it.

Handshake, in this order, each step bounded by ``HANDSHAKE_TIMEOUT_S``:

1. agent → ``ChannelHello{agent_id, agent_version, policy}`` (``policy``: what the machine's
   policy allows a live request; stored with the agent for the console's snapshot form)
2. collector → ``Challenge{nonce}``: 32 fresh random bytes for this stream only
3. agent → ``ChallengeResponse{signature}``: Ed25519 over
   ``b"casefile-channel-v1\\n" + nonce + b"\\n" + agent_id`` (``channel_message``)
4. collector checks it with the key stored for that agent id at enrollment, then sends
   ``ChannelAccepted{agent_id}``.

A signature over a nonce the collector just chose cannot be replayed on another stream,
and the agent id is trusted only because the key enrolled under it signed it. A second
stream for an agent that already has one is refused with ALREADY_EXISTS and audited: two
machines holding one key is what a cloned disk image looks like. Before refusing, the
collector probes the first stream (``Probe``): if its agent does not answer within
``PROBE_TIMEOUT_S``, that connection died unnoticed — the agent saw it first and dialled
again — so the old stream is ended, the new one accepted, and ``channel.replace`` audited.

The store work of a stream (the agent's key, its queued requests, ``last_seen_at``, the
audit row) runs on this service's own two threads, not on the event loop's default
executor: after a collector restart thousands of agents reconnect at once, and their
database calls would otherwise queue in front of every engineer's query
(``benchmarks/bench_storm.py``). Its writes are committed in groups
(``collector.services.channel_log``). And at most ``MAX_HANDSHAKES`` streams are between
their hello and their acceptance at once: one more is refused at once with UNAVAILABLE
("busy"), before any other work, so that its agent's backoff with jitter, not a queue of
handshakes that outlive the agents' patience, spaces the reconnections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from agent.keys import PublicKey
from agent.transport.channel_proof import NONCE_BYTES, channel_message
from collector.edge import Rejected, server_stream
from collector.interceptors import RateLimitedLog
from collector.live import LiveRouter
from collector.services.channel_log import ChannelLog, agent_entry
from collector.storage import Store
from collector.storage.errors import NotFound
from protos import collector_pb2, collector_pb2_grpc

__all__ = ["HANDSHAKE_TIMEOUT_S", "MAX_HANDSHAKES", "ChannelService", "channel_message", "reported_policy"]

log = logging.getLogger("casefile.collector.channel")

_T = TypeVar("_T")

HANDSHAKE_TIMEOUT_S = 15.0
# A live agent answers a Probe within a round trip; a second stream waits this long at most.
PROBE_TIMEOUT_S = 2.0
# Streams between their hello and their acceptance at once; more are refused UNAVAILABLE.
MAX_HANDSHAKES = 128


async def _next(it: AsyncIterator[collector_pb2.AgentMessage], what: str) -> collector_pb2.AgentMessage:
    try:
        return await asyncio.wait_for(anext(it), HANDSHAKE_TIMEOUT_S)
    except StopAsyncIteration:
        raise Rejected(grpc.StatusCode.CANCELLED, f"channel closed by the agent before {what}") from None
    except TimeoutError:
        raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED, f"no {what} within {HANDSHAKE_TIMEOUT_S:g} s") from None


_MAX_REPORTED_SCOPES = 64


def reported_policy(hello: collector_pb2.ChannelHello) -> dict[str, Any] | None:
    """What the agent's hello says its policy allows a live request, bounded and printable;
    None from an agent too old to say (its stored report, if any, is kept)."""
    if not hello.HasField("policy"):
        return None
    scopes = [
        s for s in hello.policy.allowed_scopes[:_MAX_REPORTED_SCOPES] if 0 < len(s) <= 100 and s.isprintable()
    ]
    return {"allowed_scopes": scopes, "max_logs_window_s": max(0, int(hello.policy.max_logs_window_s))}


class ChannelService(collector_pb2_grpc.ChannelServicer):
    def __init__(self, store: Store, router: LiveRouter, max_handshakes: int = MAX_HANDSHAKES) -> None:
        self._store = store
        self._router = router
        self._streams: set[asyncio.Task[Any]] = set()  # the handlers of open streams
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="channel-store")
        self._log = ChannelLog(store, self._pool)
        self.max_handshakes = max_handshakes
        self.handshaking = 0  # streams past their hello, not yet accepted or ended
        self.busy_refusals = 0
        self._busy_log = RateLimitedLog()
        # (doorbell port, idle seconds before parking), told to every accepted agent; None: no parking.
        self.parking: tuple[int, int] | None = None
        # Called as each accepted stream ends (the collector's heap trimmer counts them).
        self.on_closed: Callable[[], None] = lambda: None

    async def _run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn`` on the channels' own threads (see the module's docstring)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def doorbell(self, factory: Callable[..., _T], ctx: Any) -> _T:
        """The doorbell listener (``collector.doorbell.DoorbellServer``), sharing this service's
        store threads and grouped writes: a park is audited like a connect."""
        return factory(self._store, self._router, ctx, self._log, self._pool)

    async def wait_closed(self, timeout_s: float) -> None:
        """Wait (bounded) for the handlers of ended streams to finish their cleanup; the server is stopping."""
        if self._streams:
            await asyncio.wait(set(self._streams), timeout=timeout_s)
        await self._log.wait_flushed(timeout_s)  # the last connects', leaves' and parks' rows
        self._pool.shutdown(wait=False)

    async def _audit(
        self, agent_id: str, peer: str, outcome: str, detail: str, action: str = "channel.connect"
    ) -> None:
        await self._log.record(audit=agent_entry(agent_id, peer, outcome, detail, action))

    @server_stream
    async def Connect(
        self,
        request_iterator: AsyncIterator[collector_pb2.AgentMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[collector_pb2.CollectorMessage]:
        peer = context.peer() or ""
        me = asyncio.current_task()
        if me is not None:
            self._streams.add(me)
            me.add_done_callback(self._streams.discard)
        it = aiter(request_iterator)
        # The hello is read before a refusal: a grpc.aio client whose call ends before its
        # first write reports INTERNAL instead of the status it was sent.
        first = await _next(it, "hello")
        if self.handshaking >= self.max_handshakes:
            # No audit row and no log line each: a storm refuses thousands a second.
            self.busy_refusals += 1
            self._busy_log.warning(
                "channel from %s refused: %d handshakes in flight (collector busy; agents retry with backoff)",
                peer,
                self.handshaking,
            )
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"collector busy: {self.handshaking} channel handshakes in flight; retry after a backoff",
            )
        self.handshaking += 1
        counted = True
        try:
            if first.WhichOneof("msg") != "hello" or not first.hello.agent_id:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "a channel starts with ChannelHello{agent_id}")
            claimed = first.hello.agent_id[:64]
            nonce = secrets.token_bytes(NONCE_BYTES)
            yield collector_pb2.CollectorMessage(challenge=collector_pb2.Challenge(nonce=nonce))
            answer = await _next(it, "challenge response")
            if answer.WhichOneof("msg") != "challenge_response":
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "expected ChallengeResponse after the challenge")
            try:
                agent = await self._run(self._store.get_agent, claimed)
            except NotFound:
                await self._audit("", peer, "denied", f"unknown agent {claimed!r}")
                raise Rejected(grpc.StatusCode.UNAUTHENTICATED, f"unknown agent {claimed!r}: enroll it first") from None
            key = PublicKey(agent.public_key)
            if not key.verify(bytes(answer.challenge_response.signature), channel_message(nonce, agent.id)):
                await self._audit(agent.id, peer, "denied", "challenge signature invalid")
                raise Rejected(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"channel challenge not signed by the key of agent {agent.id} ({key.fingerprint})",
                )
            if agent.case_id is not None:
                detail = (
                    f"agent {agent.id} is a case-token identity (case {agent.case_id!r}): "
                    "live channels are for enrolled agents"
                )
                await self._audit(agent.id, peer, "denied", detail)
                raise Rejected(grpc.StatusCode.PERMISSION_DENIED, f"{detail}; enroll the host with an enrollment token")
            existing = self._router.session(agent.id)
            if existing is not None and not await self._router.probe(existing, PROBE_TIMEOUT_S):
                # The old stream's connection died without either end being told at once (a
                # laptop asleep, a NAT mapping dropped): the agent knows first and dials again.
                self._router.supersede(existing)
                detail = (
                    f"replaced the stream from {existing.peer}: it did not answer a probe within {PROBE_TIMEOUT_S:g} s"
                )
                await self._audit(agent.id, peer, "ok", detail, action="channel.replace")
                log.info("agent %s: %s", agent.id, detail)
            try:
                session = await self._router.connect(agent.id, peer)
            except Rejected as exc:
                await self._audit(agent.id, peer, "denied", str(exc))
                log.warning("%s", exc)
                raise
            bell = self._router.bell(agent.id)
            if bell is not None and not bell.rung:
                # An agent opens its Channel while parked only when rung (or once its doorbell
                # died): this one is another host with its key (a clone) or a dead doorbell.
                # Either way the doorbell goes; a clone on it comes back to a refusal.
                bell.close()
                detail = f"closed the doorbell parked from {bell.peer}: a Channel opened from {peer} without a ring"
                await self._audit(agent.id, peer, "ok", detail, action="channel.replace")
                log.info("agent %s: %s (its doorbell died unnoticed here, or a clone holds it)", agent.id, detail)
            reader: asyncio.Task[None] | None = None
            try:
                detail = f"{agent.hostname}, agent {first.hello.agent_version}"
                await self._log.record(
                    seen=agent.id, audit=agent_entry(agent.id, peer, "ok", detail), policy=reported_policy(first.hello)
                )
                log.info("agent %s (%s) connected from %s", agent.id, agent.hostname, peer)
                self.handshaking -= 1
                counted = False
                port, after = self.parking or (0, 0)
                accepted = collector_pb2.ChannelAccepted(agent_id=agent.id, doorbell_port=port, park_after_s=after)
                yield collector_pb2.CollectorMessage(accepted=accepted)
                reader = asyncio.create_task(self._read(it, session))
                queued = await self._run(self._store.queued_live_requests, agent.id)
                if queued:
                    await self._router.drain(agent.id, queued)
                while True:
                    msg = await session.outbox.get()
                    if msg is None:
                        break
                    yield msg
            finally:
                self._router.unregister(session)
                self.on_closed()
                if reader is not None:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reader
                with contextlib.suppress(Exception):
                    await self._log.record(seen=agent.id)
                log.info("agent %s disconnected (%s)", agent.id, peer)
        finally:
            if counted:
                self.handshaking -= 1

    async def _read(self, it: AsyncIterator[collector_pb2.AgentMessage], session: Any) -> None:
        try:
            async for msg in it:
                kind = msg.WhichOneof("msg")
                if kind == "progress":
                    await self._router.agent_progress(session, msg.progress)
                elif kind == "probe_answer":
                    self._router.answered(session, msg.probe_answer)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            raise
        except Exception:
            log.debug("channel reader of %s ended", session.agent_id, exc_info=True)
        finally:
            # The agent closed its side (it parked) or the connection broke: no request may
            # be sent this way any more (``LiveRouter._send`` queues it again), and what is
            # on its way is flushed before the writer ends the call.
            self._router.unregister(session)
            session.outbox.put_nowait(None)
