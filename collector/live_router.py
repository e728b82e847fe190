"""The live router: agent id → its Channel stream, request id → the engineers watching.

``LiveRouter`` maps an agent id to the send queue of its one live Channel stream, and a
request id to the engineers watching it. Every state change goes to the store first
(the ``live_requests`` table is the truth, so a request queued for an offline agent
survives a collector restart) and then to the watchers' queues.

Trust: an agent's progress is accepted only for requests addressed to that agent, and
``done`` only ever comes from Ingest having stored a bundle whose manifest names the
request (``bundle_stored``), never from the agent's word.

The layer below both ``collector.live`` (requests from engineers, choosing a router) and
``collector.live_pg`` (the replica-aware router on PostgreSQL), so neither imports the
other in a circle.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agent.scopes import spec_of
from agent.transport.live_states import AGENT_STATES, LiveState, state_of, to_wire
from agent.untrusted import clean_text
from collector.edge import Rejected
from collector.live_bells import ParkedAgents
from collector.storage import BundleRecord, LiveRequestRecord, Store
from protos import collector_pb2

__all__ = ["AGENT_STATES", "LiveRouter", "Session", "event_of", "request_message", "spec_envelope"]

log = logging.getLogger("casefile.collector.live")



def spec_envelope(store: Store, rec: LiveRequestRecord) -> bytes:
    """The signed spec a request's ``spec:<name>@<version>`` scope names (b"" for none)."""
    for scope in rec.scopes:
        named = spec_of(scope)
        if named is not None:
            return store.get_spec(*named).envelope
    return b""


def request_message(rec: LiveRequestRecord, envelope: bytes = b"") -> collector_pb2.CollectorMessage:
    """The ``SnapshotRequest`` sent down the agent's stream for ``rec``: the one place it
    is built, for this router and ``PgLiveRouter`` alike.

    Its text is cleaned again here (it was when the request was created): a row written
    by an older collector must not carry escape sequences to the customer's terminal.
    """
    return collector_pb2.CollectorMessage(
        snapshot_request=collector_pb2.SnapshotRequest(
            request_id=rec.request_id,
            scopes=list(rec.scopes),
            since_seconds=rec.since_s,
            requested_by=clean_text(rec.requested_label or rec.requested_by, 200),
            reason=clean_text(rec.reason, 500),
            expires_at_unix=rec.expires_at_us // 1_000_000,
            spec_envelope=envelope,
        )
    )


def event_of(rec: LiveRequestRecord) -> collector_pb2.SnapshotEvent:
    at = Timestamp()
    at.FromMicroseconds(rec.updated_at_us)
    return collector_pb2.SnapshotEvent(
        request_id=rec.request_id,
        state=rec.state,  # for clients of earlier releases (agent.transport.live_states)
        live_state=to_wire(rec.state),
        detail=rec.detail,
        bundle_id=rec.bundle_id or "",
        at=at,
        agent_id=rec.agent_id,
    )


class Outbox:
    """The messages a stream's one writer sends next, in order; ``None`` ends the stream.

    What ``asyncio.Queue`` does for one consumer, without its cost at rest: a Queue holds
    three deques and an Event (~3 KiB) for every idle agent; this holds two empty slots
    until a message comes (``benchmarks/diag_channel_memory.py``).
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[collector_pb2.CollectorMessage | None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, msg: collector_pb2.CollectorMessage | None) -> None:
        if self._items is None:
            self._items = []
        self._items.append(msg)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> collector_pb2.CollectorMessage | None:
        """The next message, waiting for one; only the stream's writer calls this."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        msg = self._items.pop(0)
        if not self._items:
            self._items = None
        return msg

    def qsize(self) -> int:
        return len(self._items) if self._items else 0


@dataclass(eq=False, slots=True)
class Session:
    """One authenticated Channel stream; ``outbox`` feeds its writer (None ends it)."""

    agent_id: str
    peer: str
    connected_at: float = field(default_factory=time.time)
    outbox: Outbox = field(default_factory=Outbox)
    probes: dict[bytes, asyncio.Future[None]] = field(default_factory=dict)  # nonce → answered


class LiveRouter(ParkedAgents):
    """Agent id → live stream; request id → watchers. Lives on the server's event loop."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._sessions: dict[str, Session] = {}
        ParkedAgents.__init__(self)
        self._watchers: dict[str, set[asyncio.Queue[collector_pb2.SnapshotEvent]]] = defaultdict(set)

    # -- streams -----------------------------------------------------------------

    def register(self, agent_id: str, peer: str) -> Session:
        existing = self._sessions.get(agent_id)
        if existing is not None:
            raise Rejected(
                grpc.StatusCode.ALREADY_EXISTS,
                f"agent {agent_id} already connected from {existing.peer} — possibly a cloned machine "
                "(two hosts with one agent key); refusing this second stream",
            )
        session = Session(agent_id=agent_id, peer=peer)
        self._sessions[agent_id] = session
        return session

    def bound_to(self, port: int) -> None:
        """Told the port the server listens on, before :meth:`start` (one process: unused)."""

    async def connect(self, agent_id: str, peer: str) -> Session:
        """What the Channel calls for an authenticated stream: :meth:`register`, and on
        PostgreSQL the replica's claim of the agent's row, committed before this returns."""
        return self.register(agent_id, peer)

    def unregister(self, session: Session) -> None:
        if self._sessions.get(session.agent_id) is session:
            del self._sessions[session.agent_id]

    async def probe(self, session: Session, timeout_s: float) -> bool:
        """Ask the stream's agent to answer (``Probe``); True if it did within ``timeout_s``."""
        nonce = secrets.token_bytes(16)
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session.probes[nonce] = answered
        session.outbox.put_nowait(collector_pb2.CollectorMessage(probe=collector_pb2.Probe(nonce=nonce)))
        try:
            await asyncio.wait_for(answered, timeout_s)
        except TimeoutError:
            return False
        finally:
            session.probes.pop(nonce, None)
        return True

    def answered(self, session: Session, answer: collector_pb2.ProbeAnswer) -> None:
        waiting = session.probes.get(bytes(answer.nonce))
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def supersede(self, session: Session) -> None:
        """End a stream whose agent no longer answers, so the agent's new stream can take over."""
        self.unregister(session)
        session.outbox.put_nowait(None)

    def session(self, agent_id: str) -> Session | None:
        return self._sessions.get(agent_id)

    def connected(self) -> list[str]:
        return list(self._sessions)

    async def online_among(self, agent_ids: list[str]) -> set[str]:
        """Those of ``agent_ids`` holding a live stream or parked now."""
        return {a for a in agent_ids if self._here(a)}

    async def is_online(self, agent_id: str) -> bool:
        """Whether some replica holds the agent's stream or its doorbell (here: this process)."""
        return self._here(agent_id)

    def _here(self, agent_id: str) -> bool:
        """This process holds the agent's stream (it sends) or its doorbell (it rings)."""
        return agent_id in self._sessions or agent_id in self._bells

    async def start(self) -> None:
        """Background work a router needs while serving; none in one process."""

    async def aclose(self) -> None:
        """Undo :meth:`start` (after :meth:`close`)."""

    def close(self) -> None:
        """End every stream (server shutdown): agents reconnect to the next process."""
        for session in list(self._sessions.values()):
            session.outbox.put_nowait(None)
        self._sessions.clear()

    # -- requests ----------------------------------------------------------------

    def watch(self, request_id: str) -> asyncio.Queue[collector_pb2.SnapshotEvent]:
        q: asyncio.Queue[collector_pb2.SnapshotEvent] = asyncio.Queue()
        self._watchers[request_id].add(q)
        return q

    def unwatch(self, request_id: str, q: asyncio.Queue[collector_pb2.SnapshotEvent]) -> None:
        watchers = self._watchers.get(request_id)
        if watchers is not None:
            watchers.discard(q)
            if not watchers:
                del self._watchers[request_id]

    def _publish(self, rec: LiveRequestRecord) -> None:
        event = event_of(rec)
        for q in self._watchers.get(rec.request_id, ()):
            q.put_nowait(event)

    async def advance(
        self, request_id: str, state: str, *, detail: str = "", bundle_id: str | None = None
    ) -> LiveRequestRecord | None:
        rec = await asyncio.to_thread(
            self._store.advance_live_request, request_id, state, detail=detail, bundle_id=bundle_id
        )
        if rec is not None:
            self._publish(rec)
        return rec

    async def deliver(self, rec: LiveRequestRecord) -> bool:
        """Send a request down its agent's stream; False when the agent is not connected (a
        parked agent is rung: the request stays queued for the Channel it opens) or the request
        is not ``queued`` any more. On PostgreSQL, another replica's agents are its own (NOTIFY)."""
        session = self._sessions.get(rec.agent_id)
        if session is None:
            self.ring(rec.agent_id)
            return False
        # Claimed (queued → delivered, one caller wins): the drain of a stream accepted just
        # now and a request given back by ``_send`` may both try to send it.
        claimed = await asyncio.to_thread(self._store.claim_live_request, rec.request_id, self._sent_to(session))
        if claimed is None:
            return False
        self._publish(claimed)
        msg = request_message(claimed, await asyncio.to_thread(spec_envelope, self._store, claimed))
        return await self._send(session, claimed, msg)

    async def _send(self, session: Session, rec: LiveRequestRecord, msg: collector_pb2.CollectorMessage) -> bool:
        """Put ``msg`` on ``session``'s stream if it is still the agent's; a stream that ended
        while the request was being marked delivered (the agent parking, a connection lost)
        would never send it: the request is queued again, and its agent rung if parked."""
        if self._sessions.get(rec.agent_id) is session:
            session.outbox.put_nowait(msg)
            return True
        requeued = await self.advance(
            rec.request_id, LiveState.QUEUED, detail="the agent's stream ended before it was sent"
        )
        if requeued is not None and requeued.state == LiveState.QUEUED and rec.agent_id in self._sessions:
            # The agent is back on a new stream, whose drain may have run before this: send it there.
            return await self.deliver(requeued)
        self.ring(rec.agent_id)
        return False

    def _sent_to(self, session: Session) -> str:
        """The detail of a request sent down ``session``."""
        return f"sent to {session.peer}"

    async def deliver_many(self, recs: list[LiveRequestRecord], batch: int = 100) -> int:
        """:meth:`deliver` for many requests (a hunt): claimed ``batch`` to a transaction,
        so a thousand hosts cost ten short writes, not a thousand; returns how many were sent.

        Only requests still ``queued`` are sent (another path may have sent one already:
        on PostgreSQL, the replica holding the stream claims what its NOTIFY names).
        """
        sent = 0
        envelopes: dict[tuple[str, ...], bytes] = {}
        here = [(rec, s) for rec in recs if (s := self._sessions.get(rec.agent_id)) is not None]
        for rec in recs:  # parked: rung, they take theirs when their Channel is back
            if rec.agent_id not in self._sessions:
                self.ring(rec.agent_id)
        for i in range(0, len(here), batch):
            chunk = here[i : i + batch]
            sessions = {rec.request_id: s for rec, s in chunk}
            claims = [(rec.request_id, self._sent_to(s)) for rec, s in chunk]
            claimed = await asyncio.to_thread(self._store.claim_live_requests, claims)
            for rec in claimed:
                if rec.scopes not in envelopes:
                    envelopes[rec.scopes] = await asyncio.to_thread(spec_envelope, self._store, rec)
                self._publish(rec)
                if await self._send(sessions[rec.request_id], rec, request_message(rec, envelopes[rec.scopes])):
                    sent += 1
        return sent

    async def drain(self, agent_id: str, queued: list[LiveRequestRecord] | None = None) -> None:
        """Deliver what was queued while the agent was away (``queued``, if the caller has
        read it already); expire what is too old."""
        now = dt.datetime.now(dt.UTC)
        if queued is None:
            queued = await asyncio.to_thread(self._store.queued_live_requests, agent_id)
        for rec in queued:
            if rec.expires_at <= now:
                await self.advance(rec.request_id, LiveState.EXPIRED, detail="expired before the agent reconnected")
            else:
                await self.deliver(rec)

    async def agent_progress(self, session: Session, progress: collector_pb2.SnapshotProgress) -> None:
        state = state_of(progress)  # the enum; the string from an agent of an earlier release
        if state not in AGENT_STATES:
            return
        # One write, only if the request is this agent's (the agent's words reach the
        # engineer's terminal: cleaned like the other way round).
        rec = await asyncio.to_thread(
            self._store.advance_live_request,
            progress.request_id,
            state,
            detail=clean_text(progress.detail, 2000),
            agent_id=session.agent_id,
        )
        if rec is not None:
            self._publish(rec)
            return
        try:  # only to say why not: unknown, another agent's, or final already
            rec = await asyncio.to_thread(self._store.get_live_request, progress.request_id)
        except Exception:
            log.info("agent %s reported on unknown request %r", session.agent_id, progress.request_id)
            return
        if rec.agent_id != session.agent_id:
            log.warning(
                "agent %s reported on request %s of agent %s: ignored", session.agent_id, rec.request_id, rec.agent_id
            )

    async def bundle_stored(self, bundle: BundleRecord, request_id: str, answered: LiveRequestRecord | None) -> None:
        """Ingest's hook: the bundle answering a live request is stored, and the request
        moved to ``done`` in the same transaction (``answered``; None when it was not)."""
        if answered is not None:
            self._publish(answered)
            return
        try:  # only to say why: unknown, final already, or another agent's
            rec = await asyncio.to_thread(self._store.get_live_request, request_id)
        except Exception:
            return
        if rec.agent_id != bundle.agent_id:
            log.warning(
                "bundle %s from %s names request %s of another agent", bundle.bundle_id, bundle.agent_id, request_id
            )
