"""Routing live snapshot requests inside one collector process.

``LiveRouter`` maps an agent id to the send queue of its one live Channel stream, and a
request id to the engineers watching it. Every state change goes to the store first
(the ``live_requests`` table is the truth, so a request queued for an offline agent
survives a collector restart) and then to the watchers' queues.

Trust: an agent's progress is accepted only for requests addressed to that agent, and
``done`` only ever comes from Ingest having stored a bundle whose manifest names the
request (``bundle_stored``), never from the agent's word.

Several replicas (DESIGN §6) share PostgreSQL: ``collector.live_pg.PgLiveRouter`` keeps
this interface and forwards requests and their progress through LISTEN/NOTIFY to the
replica holding the stream; this router is the single-process (SQLite) path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agent import scopes as _scopes
from agent.untrusted import clean_text
from collector.auth import record_outcome
from collector.edge import Rejected
from collector.storage import AgentRecord, AuditRecord, BundleRecord, LiveRequestRecord, Store, TokenRecord
from collector.timestamps import timestamp_us
from protos import collector_pb2

__all__ = [
    "AGENT_STATES",
    "DEFAULT_TIMEOUT_S",
    "SCOPES",
    "LiveRouter",
    "Session",
    "audit_entry",
    "event_of",
    "make_router",
    "request_message",
    "request_snapshot",
]

# The scopes an engineer may name (``agent.scopes``, the agent's own table); the agent's
# policy decides which it honours.
SCOPES = _scopes.SCOPES
DEFAULT_TIMEOUT_S = 60
_MAX_WAIT_S = 7 * 86400

log = logging.getLogger("casefile.collector.live")

# What an agent may report about a request; "done" is not among them (see module doc).
AGENT_STATES = frozenset({"collecting", "uploading", "denied", "failed", "expired"})


def request_message(rec: LiveRequestRecord) -> collector_pb2.CollectorMessage:
    """The ``SnapshotRequest`` sent down the agent's stream for ``rec``.

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
        )
    )


def event_of(rec: LiveRequestRecord) -> collector_pb2.SnapshotEvent:
    at = Timestamp()
    at.FromMicroseconds(rec.updated_at_us)
    return collector_pb2.SnapshotEvent(
        request_id=rec.request_id,
        state=rec.state,
        detail=rec.detail,
        bundle_id=rec.bundle_id or "",
        at=at,
        agent_id=rec.agent_id,
    )


@dataclass(eq=False)
class Session:
    """One authenticated Channel stream; ``outbox`` feeds its writer (None ends it)."""

    agent_id: str
    peer: str
    connected_at: float = field(default_factory=time.time)
    outbox: asyncio.Queue[collector_pb2.CollectorMessage | None] = field(default_factory=asyncio.Queue)
    probes: dict[bytes, asyncio.Future[None]] = field(default_factory=dict)  # nonce → answered


class LiveRouter:
    """Agent id → live stream; request id → watchers. Lives on the server's event loop."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._sessions: dict[str, Session] = {}
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
        """Those of ``agent_ids`` holding a live stream now."""
        return {a for a in agent_ids if a in self._sessions}

    async def is_online(self, agent_id: str) -> bool:
        """Whether some replica holds the agent's stream (here: this process)."""
        return agent_id in self._sessions

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
        """Send a request down its agent's stream; False when the agent is not connected."""
        session = self._sessions.get(rec.agent_id)
        if session is None:
            return False
        msg = request_message(rec)
        await self.advance(rec.request_id, "delivered", detail=f"sent to {session.peer}")
        session.outbox.put_nowait(msg)
        return True

    async def drain(self, agent_id: str) -> None:
        """Deliver what was queued while the agent was away; expire what is too old."""
        now = dt.datetime.now(dt.UTC)
        for rec in await asyncio.to_thread(self._store.queued_live_requests, agent_id):
            if rec.expires_at <= now:
                await self.advance(rec.request_id, "expired", detail="expired before the agent reconnected")
            else:
                await self.deliver(rec)

    async def agent_progress(self, session: Session, progress: collector_pb2.SnapshotProgress) -> None:
        if progress.state not in AGENT_STATES:
            return
        try:
            rec = await asyncio.to_thread(self._store.get_live_request, progress.request_id)
        except Exception:
            log.info("agent %s reported on unknown request %r", session.agent_id, progress.request_id)
            return
        if rec.agent_id != session.agent_id:
            log.warning(
                "agent %s reported on request %s of agent %s: ignored", session.agent_id, rec.request_id, rec.agent_id
            )
            return
        # The agent's words reach the engineer's terminal: cleaned like the other way round.
        await self.advance(rec.request_id, progress.state, detail=clean_text(progress.detail, 2000))

    async def bundle_stored(self, bundle: BundleRecord, request_id: str) -> None:
        """Ingest's hook: the bundle answering a live request is stored."""
        try:
            rec = await asyncio.to_thread(self._store.get_live_request, request_id)
        except Exception:
            return
        if rec.agent_id != bundle.agent_id:
            log.warning(
                "bundle %s from %s names request %s of another agent", bundle.bundle_id, bundle.agent_id, request_id
            )
            return
        await self.advance(request_id, "done", detail=f"bundle {bundle.bundle_id} stored", bundle_id=bundle.bundle_id)


def make_router(store: Store, db_url: str, replica_id: str | None = None) -> LiveRouter:
    """The in-process router on SQLite; the replica-aware one on PostgreSQL.

    ``collector.live_pg`` (and psycopg, the ``postgres`` extra) is imported only for a
    PostgreSQL store: a collector on SQLite needs neither.
    """
    if store.engine.dialect.name == "postgresql":
        from collector.live_pg import PgLiveRouter, default_replica_id, libpq_dsn

        return PgLiveRouter(store, libpq_dsn(db_url), replica_id or default_replica_id())
    return LiveRouter(store)


def audit_entry(rec: AuditRecord) -> collector_pb2.AuditEntry:
    return collector_pb2.AuditEntry(
        id=rec.id,
        at=timestamp_us(rec.at_us),
        actor=rec.actor,
        actor_label=rec.actor_label,
        role=rec.role,
        action=rec.action,
        target=rec.target,
        peer=rec.peer,
        outcome=rec.outcome,
        detail=rec.detail,
    )


def _when(us: int | None) -> str:
    if us is None:
        return "never"
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def _resolve(store: Store, router: LiveRouter, host: str) -> AgentRecord:
    """A host name or agent id → the one enrolled agent a request may go to.

    A case-token identity never takes live requests: its host name is whatever the
    customer's upload claimed, so anyone with a case token could name themselves
    ``web-7`` and be sent the requests meant for the real one. Of several enrolled agents
    reporting the name, the one connected is chosen if it is the only one; otherwise the
    request is refused with their ids, never sent to whichever sorts first.
    """
    if host.startswith("ag_"):
        agent = await asyncio.to_thread(store.get_agent, host)
        if agent.case_id is not None:
            raise Rejected(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"agent {agent.id} is a case-token identity (case {agent.case_id!r}): "
                "live requests go to enrolled agents only",
            )
        return agent
    found = await asyncio.to_thread(store.agents_by_hostname, host)
    enrolled = [a for a in found if a.case_id is None]
    if not enrolled:
        bound = ""
        if found:
            bound = f"; {len(found)} case-token identities report it ({_ids(found)}) and take no live requests"
        raise Rejected(grpc.StatusCode.NOT_FOUND, f"no enrolled agent reports hostname {host!r}{bound}")
    if len(enrolled) == 1:
        return enrolled[0]
    live = [a for a in enrolled if await router.is_online(a.id)]
    if len(live) == 1:
        return live[0]
    which = "connected " if live else ""
    raise Rejected(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"host {host!r} has several {which}enrolled agents ({_ids(live or enrolled)}); name one by id",
    )


def _ids(agents: list[AgentRecord], most: int = 10) -> str:
    shown = ", ".join(a.id for a in agents[:most])
    return shown + (f" and {len(agents) - most} more" if len(agents) > most else "")


async def request_snapshot(
    store: Store,
    router: LiveRouter,
    token: TokenRecord,
    spec: collector_pb2.SnapshotRequestSpec,
    peer: str,
) -> AsyncIterator[collector_pb2.SnapshotEvent]:
    """Create, deliver and follow one live request until it ends or times out."""
    scopes = tuple(dict.fromkeys(spec.scopes)) or ("facts",)
    unknown = [s for s in scopes if not _scopes.is_scope(s)]
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {_scopes.scope_names()}")
    if spec.since_seconds < 0 or spec.wait_s < 0 or spec.timeout_s < 0 or spec.wait_s > _MAX_WAIT_S:
        raise ValueError("since_seconds, wait_s and timeout_s must be >= 0 (wait_s at most 7 days)")
    agent = await _resolve(store, router, spec.host)
    timeout = spec.timeout_s or DEFAULT_TIMEOUT_S
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(seconds=spec.wait_s or timeout)
    rec = await asyncio.to_thread(
        lambda: store.create_live_request(
            agent_id=agent.id,
            # What the agent shows its owner: no control or bidi characters (see
            # agent.untrusted); the agent cleans it again, trusting no collector.
            hostname=clean_text(agent.hostname, 255),
            requested_by=token.id,
            requested_label=clean_text(token.label or token.id, 200),
            scopes=scopes,
            since_s=int(spec.since_seconds),
            reason=clean_text(spec.reason, 500),
            expires_at=expires,
        )
    )
    online = await router.is_online(agent.id)
    if not online and spec.wait_s <= 0:
        detail = f"agent {agent.id} ({agent.hostname}) offline since {_when(agent.last_seen_at_us)}"
        await router.advance(rec.request_id, "offline", detail=detail)
        await asyncio.to_thread(
            lambda: store.audit(
                actor=token.id,
                actor_label=token.label,
                role=token.role or "",
                action="live.snapshot_offline",
                target=agent.id,
                peer=peer,
                outcome="error",
                detail=detail,
            )
        )
        record_outcome("offline", detail)
        raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, detail + " (use --wait to queue the request)")
    q = router.watch(rec.request_id)
    try:
        yield event_of(rec)
        if online:
            await router.deliver(rec)
        else:
            # Queued: the Channel handler drains it when the agent reconnects.
            yield collector_pb2.SnapshotEvent(
                request_id=rec.request_id,
                state="queued",
                detail=f"agent offline since {_when(agent.last_seen_at_us)}; queued until {_when(rec.expires_at_us)}",
                agent_id=agent.id,
                at=timestamp_us(rec.updated_at_us),
            )
        deadline = time.monotonic() + (spec.wait_s if not online else 0) + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                event = await asyncio.wait_for(q.get(), remaining)
            except TimeoutError:
                break
            yield event
            if event.state in ("done", "denied", "failed", "expired", "offline"):
                # The audit row of the call says how the request ended, not just that the call did.
                record_outcome(event.state, event.detail)
                return
        current = await asyncio.to_thread(store.get_live_request, rec.request_id)
        final = None
        if current.state in ("queued", "delivered"):
            final = await router.advance(rec.request_id, "expired", detail=f"timed out after {timeout} s")
        if final is None:
            # Already past queued/delivered and still running (e.g. a slow upload).
            detail = f"no result within {timeout} s"
            record_outcome("timeout", f"{detail} (request {current.state})")
            yield collector_pb2.SnapshotEvent(
                request_id=rec.request_id, state="timeout", detail=detail, agent_id=agent.id
            )
        else:
            record_outcome(final.state, final.detail)
            yield event_of(final)
    finally:
        router.unwatch(rec.request_id, q)
