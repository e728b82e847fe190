"""Hunts: one engineer request for every agent a selector picks (labels, host glob).

A hunt is a ``hunts`` row plus one ordinary live request per selected agent, made with
the same store call and delivered by the same router as ``RequestSnapshot``'s: each
agent's own policy decides (``denied`` comes back per host), and an agent that is
offline finds its request queued when it reconnects (``LiveRouter.drain``) until the
hunt expires. The hunt keeps no state of its own; its status is read from its live
requests, so it cannot disagree with them.

Audit: the RPC's own row (``hunt.create``, target the hunt's case) plus one
``hunt.request`` row per host naming the hunt and the request — the live requests of a
hunt are not otherwise audited, so nothing is recorded twice.

Limits (per engineer token): :data:`HUNTS_PER_HOUR` hunts in any rolling hour and
:data:`MAX_HOSTS` hosts per hunt; a selector matching more is refused with the count,
never cut to an arbitrary subset.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch

import grpc

from agent.identity_text import identity_problem
from agent.labels import parse_labels
from agent.transport.live_states import LiveState, to_wire
from agent.untrusted import clean_text
from collector.edge import Rejected
from collector.live import SCOPES, LiveRouter
from collector.storage import AgentRecord, LiveRequestRecord, Store, TokenRecord
from collector.storage.errors import InvalidArgument
from collector.storage.hunts import HuntRecord
from collector.timestamps import timestamp_us
from protos import collector_pb2

__all__ = [
    "DEFAULT_EXPIRES_S",
    "HUNTS_PER_HOUR",
    "MAX_EXPIRES_S",
    "MAX_HOSTS",
    "create_hunt",
    "hunt_status",
    "shown_state",
]

HUNTS_PER_HOUR = 10
MAX_HOSTS = 1000
DEFAULT_EXPIRES_S = 86400
MAX_EXPIRES_S = 7 * 86400
# Selecting from the store stops here: a selector this broad is refused before the glob.
_SELECT_CAP = 100_000


def _check(spec: collector_pb2.HuntSpec) -> tuple[dict[str, str], tuple[str, ...]]:
    try:
        labels = parse_labels(list(spec.labels))
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    if spec.host_pattern:
        problem = identity_problem(spec.host_pattern)
        if problem is not None:
            raise InvalidArgument(f"host pattern {spec.host_pattern[:40]!r} {problem}")
    if not labels and not spec.host_pattern:
        raise InvalidArgument("a hunt needs --label key=value or --host PATTERN (use --host '*' for every agent)")
    problem = identity_problem(spec.case_id, max_chars=200)
    if problem is not None:
        raise InvalidArgument(f"case {spec.case_id[:40]!r} {problem}")
    scopes = tuple(dict.fromkeys(spec.scopes)) or ("facts",)
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidArgument(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not 0 <= spec.expires_s <= MAX_EXPIRES_S or spec.since_seconds < 0:
        raise InvalidArgument(f"expires_s must be 0..{MAX_EXPIRES_S} (7 days) and since_seconds >= 0")
    return labels, scopes


def _selector(labels: dict[str, str], pattern: str) -> str:
    parts = [",".join(f"{k}={v}" for k, v in sorted(labels.items()))] if labels else []
    if pattern:
        parts.append(f"host={pattern}")
    return " ".join(parts)


async def _select(store: Store, labels: dict[str, str], pattern: str) -> list[AgentRecord]:
    found = await asyncio.to_thread(store.enrolled_agents_with, labels, _SELECT_CAP)
    if pattern:
        # fnmatchcase: a glob means the same on the collector whatever its OS.
        found = [a for a in found if fnmatch.fnmatchcase(a.hostname, pattern)]
    return found


async def create_hunt(
    store: Store, router: LiveRouter, token: TokenRecord, spec: collector_pb2.HuntSpec, peer: str
) -> HuntRecord:
    """Check, select, record the hunt and one live request per agent; deliver to those online."""
    labels, scopes = _check(spec)
    now = dt.datetime.now(dt.UTC)
    recent = await asyncio.to_thread(
        store.hunts_created_since, token.id, int((now - dt.timedelta(hours=1)).timestamp() * 1e6)
    )
    if recent >= HUNTS_PER_HOUR:
        raise Rejected(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{recent} hunts created by this token in the last hour; at most {HUNTS_PER_HOUR} are allowed",
        )
    selector = _selector(labels, spec.host_pattern)
    agents = await _select(store, labels, spec.host_pattern)
    if not agents:
        raise Rejected(grpc.StatusCode.NOT_FOUND, f"no enrolled agent matches {selector}")
    if len(agents) > MAX_HOSTS:
        raise Rejected(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{selector} matches {len(agents)} agents; a hunt reaches at most {MAX_HOSTS}: narrow the selector",
        )
    expires = now + dt.timedelta(seconds=spec.expires_s or DEFAULT_EXPIRES_S)
    label = clean_text(token.label or token.id, 200)
    reason = clean_text(f"[{spec.case_id}] {spec.reason}".rstrip(), 500)
    hunt, recs = await asyncio.to_thread(
        lambda: store.create_hunt(
            case_id=spec.case_id,
            created_by=token.id,
            created_label=label,
            selector=selector,
            scopes=scopes,
            since_s=int(spec.since_seconds),
            reason=reason,
            expires_at=expires,
            # What each agent shows its owner: cleaned as RequestSnapshot's (agent.untrusted).
            agents=[(a.id, clean_text(a.hostname, 255)) for a in agents],
        )
    )
    # One query for who is connected, one transaction for the rows of the audit log, and
    # the deliveries claimed a hundred to a transaction: a request per host costs no
    # write of its own, so a hunt over a thousand hosts is sent in well under a second.
    online = await router.online_among([rec.agent_id for rec in recs])
    await asyncio.to_thread(
        store.audit_rows,
        [
            {
                "actor": token.id,
                "actor_label": token.label,
                "role": token.role or "",
                "action": "hunt.request",
                "target": rec.agent_id,
                "peer": peer,
                "outcome": "ok",
                "detail": f"hunt {hunt.hunt_id} request {rec.request_id} {rec.hostname} "
                + ("delivered" if rec.agent_id in online else "queued (offline)"),
            }
            for rec in recs
        ],
    )
    # Offline: the Channel handler drains the queued request when the agent reconnects.
    await router.deliver_many([rec for rec in recs if rec.agent_id in online])
    return hunt


def shown_state(rec: LiveRequestRecord, online: bool, now_us: int) -> str:
    """What ``hunt status`` calls a request: ``offline`` is a queued one whose agent is away."""
    if rec.state == LiveState.QUEUED:
        if rec.expires_at_us <= now_us:
            return LiveState.EXPIRED
        return LiveState.QUEUED if online else LiveState.OFFLINE
    return rec.state


async def hunt_status(store: Store, router: LiveRouter, hunt_id: str) -> collector_pb2.HuntStatus:
    """The hunt and each host's state; requests queued past the hunt's expiry are expired now."""
    hunt = await asyncio.to_thread(store.get_hunt, hunt_id)
    recs = await asyncio.to_thread(store.hunt_live_requests, hunt_id)
    now_us = int(dt.datetime.now(dt.UTC).timestamp() * 1e6)
    online = await router.online_among([rec.agent_id for rec in recs])
    hosts: list[collector_pb2.HuntHost] = []
    counts: dict[str, int] = {}
    for rec in recs:
        if rec.state == LiveState.QUEUED and rec.expires_at_us <= now_us:
            # Written, not only shown: an agent that never came back must not get it later.
            detail = "hunt expired before the agent connected"
            rec = await router.advance(rec.request_id, LiveState.EXPIRED, detail=detail) or rec
        state = shown_state(rec, rec.agent_id in online, now_us)
        counts[str(state)] = counts.get(state, 0) + 1
        hosts.append(
            collector_pb2.HuntHost(
                agent_id=rec.agent_id,
                hostname=rec.hostname,
                request_id=rec.request_id,
                state=state,  # for clients of earlier releases (agent.transport.live_states)
                live_state=to_wire(state),
                detail=rec.detail,
                bundle_id=rec.bundle_id or "",
                updated_at=timestamp_us(rec.updated_at_us),
            )
        )
    return collector_pb2.HuntStatus(
        hunt_id=hunt.hunt_id,
        case_id=hunt.case_id,
        created_by=hunt.created_label,
        created_at=timestamp_us(hunt.created_at_us),
        expires_at=timestamp_us(hunt.expires_at_us),
        scopes=list(hunt.scopes),
        selector=hunt.selector,
        reason=hunt.reason,
        hosts=hosts,
        counts=counts,
    )
