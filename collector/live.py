"""Live snapshot requests from engineers: create, deliver, follow (``request_snapshot``).

The routing itself (agent id → stream, request id → watchers) is
``collector.live_router.LiveRouter``; its names are re-exported here. Several replicas
(DESIGN §6) share PostgreSQL: ``collector.live_pg.PgLiveRouter`` keeps that interface
and forwards requests and their progress through LISTEN/NOTIFY to the replica holding
the stream; :func:`make_router` picks one. The states are
``agent.transport.live_states.LiveState``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator

import grpc

from agent import scopes as _scopes
from agent.transport.live_states import AGENT_STATES, CALL_ENDS, LiveState, state_of, to_wire
from agent.untrusted import clean_text
from collector.auth import record_outcome
from collector.edge import Rejected
from collector.live_router import LiveRouter, Session, event_of, request_message
from collector.storage import AgentRecord, AuditRecord, Store, TokenRecord
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


def make_router(store: Store, db_url: str, replica_id: str | None = None) -> LiveRouter:
    """The in-process router on SQLite; the replica-aware one on PostgreSQL.

    ``collector.live_pg`` (and psycopg, the ``postgres`` extra) is imported only for a
    PostgreSQL store: a collector on SQLite needs neither.
    """
    if store.engine.dialect.name == "postgresql":
        from collector.live_pg import PgLiveRouter, libpq_dsn

        return PgLiveRouter(store, libpq_dsn(db_url), replica_id)
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


def spec_scope(store: Store, name: str) -> str:
    """The scope ``spec:<name>@<version>`` of a stored spec (``name`` or ``name@version``);
    NotFound (NOT_FOUND to the caller) when it is not stored."""
    base, _, version = name.partition("@")
    if not version.isdigit() and version:
        raise ValueError(f"spec {name[:60]!r}: expected NAME or NAME@VERSION")
    rec = store.get_spec(base, int(version) if version else None)
    return f"{_scopes.SPEC_PREFIX}{rec.name}@{rec.version}"


def _ids(agents: list[AgentRecord], most: int = 10) -> str:
    shown = ", ".join(a.id for a in agents[:most])
    return shown + (f" and {len(agents) - most} more" if len(agents) > most else "")


async def request_snapshot(
    store: Store,
    router: LiveRouter,
    token: TokenRecord,
    spec: collector_pb2.SnapshotRequestSpec,
) -> AsyncIterator[collector_pb2.SnapshotEvent]:
    """Create, deliver and follow one live request until it ends or times out."""
    scopes = tuple(dict.fromkeys(spec.scopes)) or ("facts",)
    if any(_scopes.spec_of(s) for s in scopes):
        raise ValueError("name a collection spec with --spec (the request's spec field), not as a scope")
    if spec.spec:
        scopes = (*scopes, await asyncio.to_thread(spec_scope, store, spec.spec))
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
        await router.advance(rec.request_id, LiveState.OFFLINE, detail=detail)
        # The call's own audit row (``collector.auth.audited``) records this refusal, with
        # the agent id and when it was last seen in its detail: one row, not two.
        record_outcome(LiveState.OFFLINE, detail)
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
                state=LiveState.QUEUED,
                live_state=to_wire(LiveState.QUEUED),
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
            state = state_of(event)
            if state in CALL_ENDS:
                # The audit row of the call says how the request ended, not just that the call did.
                record_outcome(state, event.detail)
                return
        current = await asyncio.to_thread(store.get_live_request, rec.request_id)
        final = None
        if current.state in (LiveState.QUEUED, LiveState.DELIVERED):
            final = await router.advance(rec.request_id, LiveState.EXPIRED, detail=f"timed out after {timeout} s")
        if final is None:
            # Already past queued/delivered and still running (e.g. a slow upload).
            detail = f"no result within {timeout} s"
            record_outcome(LiveState.TIMEOUT, f"{detail} (request {current.state})")
            yield collector_pb2.SnapshotEvent(
                request_id=rec.request_id,
                state=LiveState.TIMEOUT,
                live_state=to_wire(LiveState.TIMEOUT),
                detail=detail,
                agent_id=agent.id,
            )
        else:
            record_outcome(final.state, final.detail)
            yield event_of(final)
    finally:
        router.unwatch(rec.request_id, q)
