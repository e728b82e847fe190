"""Hunts: one engineer request for many agents, and the labels that select them.

A hunt is a row here plus one ``live_requests`` row per selected agent (linked by
``hunt_requests``); the live requests carry every state, so a hunt has no state of its
own to drift from theirs. ``agent_labels`` holds the ``key=value`` pairs an agent gave
at enroll (checked by :mod:`agent.labels`). Own ``MetaData``: one migration step
creates all three tables and must keep creating exactly those.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select, text

from agent.transport.live_states import LiveState
from collector.storage.agents import _agent
from collector.storage.base import StoreBase
from collector.storage.errors import InvalidArgument, NotFound
from collector.storage.hunts_schema import agent_labels, create_hunt_tables, hunt_metadata, hunt_requests, hunts
from collector.storage.live import LIVE_CHANNEL, LiveRequestRecord, live_record, live_requests
from collector.storage.schema import AgentRecord, agents, to_micros

__all__ = ["HuntMethods", "HuntRecord", "create_hunt_tables", "hunt_metadata"]

@dataclass(frozen=True)
class HuntRecord:
    hunt_id: str
    case_id: str
    created_by: str
    created_label: str
    selector: str
    scopes: tuple[str, ...]
    reason: str
    created_at_us: int
    expires_at_us: int


def _hunt(row: Row[Any]) -> HuntRecord:
    m = row._mapping
    return HuntRecord(
        hunt_id=m["hunt_id"],
        case_id=m["case_id"],
        created_by=m["created_by"],
        created_label=m["created_label"],
        selector=m["selector"],
        scopes=tuple(s for s in str(m["scopes"]).split(",") if s),
        reason=m["reason"],
        created_at_us=m["created_at"],
        expires_at_us=m["expires_at"],
    )


class HuntMethods(StoreBase):
    """Labels per agent; hunts and the live requests they made."""

    def set_agent_labels(self, agent_id: str, labels: dict[str, str]) -> None:
        """Replace the agent's labels (enrolling again states them anew)."""
        with self._write() as conn:
            conn.execute(agent_labels.delete().where(agent_labels.c.agent_id == agent_id))
            if labels:
                conn.execute(
                    agent_labels.insert(), [{"agent_id": agent_id, "key": k, "value": v} for k, v in labels.items()]
                )

    def agent_labels(self, agent_ids: list[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {a: {} for a in agent_ids}
        if not agent_ids:
            return out
        c = agent_labels.c
        with self._read() as conn:
            for row in conn.execute(select(c.agent_id, c.key, c.value).where(c.agent_id.in_(agent_ids))):
                out[row.agent_id][row.key] = row.value
        return out

    def enrolled_agents_with(self, labels: dict[str, str], limit: int) -> list[AgentRecord]:
        """Enrolled agents (no case-token identities) carrying every label, by id; at most ``limit``."""
        query = select(agents).where(agents.c.case_id.is_(None)).order_by(agents.c.id).limit(limit)
        c = agent_labels.c
        for key, value in labels.items():
            query = query.where(agents.c.id.in_(select(c.agent_id).where(c.key == key, c.value == value)))
        with self._read() as conn:
            return [_agent(r) for r in conn.execute(query)]

    def create_hunt(
        self,
        *,
        case_id: str,
        created_by: str,
        created_label: str,
        selector: str,
        scopes: tuple[str, ...],
        since_s: int,
        reason: str,
        expires_at: datetime,
        agents: list[tuple[str, str]],
    ) -> tuple[HuntRecord, list[LiveRequestRecord]]:
        """The hunt and one queued live request per ``(agent id, hostname)``, in one transaction.

        The request rows are the ones ``create_live_request`` writes (same columns, same
        ``queued`` start, same NOTIFY on PostgreSQL so the replica holding an agent's
        stream delivers it); a crash half-way leaves no hunt with some of its hosts.
        """
        if any("," in s or not s for s in scopes):
            raise InvalidArgument(f"scopes {scopes!r}: names must be non-empty and without commas")
        now = self._now()
        expires_us = to_micros(expires_at)
        hunt_values = {
            "hunt_id": "hu_" + secrets.token_hex(12),
            "case_id": case_id,
            "created_by": created_by[:32],
            "created_label": created_label,
            "selector": selector,
            "scopes": ",".join(scopes),
            "reason": reason,
            "created_at": now,
            "expires_at": expires_us,
        }
        ids = [secrets.token_hex(16) for _ in agents]
        rows: list[dict[str, Any]] = [
            {
                "request_id": rid,
                "agent_id": agent_id,
                "hostname": hostname,
                "requested_by": created_by[:32],
                "requested_label": created_label,
                "scopes": ",".join(scopes),
                "since_s": since_s,
                "reason": reason,
                "state": str(LiveState.QUEUED),
                "detail": "",
                "bundle_id": None,
                "created_at": now,
                "expires_at": expires_us,
                "updated_at": now,
            }
            for rid, (agent_id, hostname) in zip(ids, agents, strict=True)
        ]
        with self._write() as conn:
            hunt = conn.execute(hunts.insert().values(hunt_values).returning(*hunts.c)).one()
            if rows:
                conn.execute(live_requests.insert(), rows)
                conn.execute(
                    hunt_requests.insert(),
                    [{"hunt_id": hunt_values["hunt_id"], "request_id": r["request_id"]} for r in rows],
                )
            if self._pg:
                # As LiveMethods._notify_live: delivered on commit, one per request.
                for r in rows:
                    conn.execute(text("SELECT pg_notify(:ch, :rid)"), {"ch": LIVE_CHANNEL, "rid": r["request_id"]})
        return _hunt(hunt), self.hunt_requests_in_order(ids)

    def hunt_requests_in_order(self, request_ids: list[str]) -> list[LiveRequestRecord]:
        if not request_ids:
            return []
        with self._read() as conn:
            query = select(live_requests).where(live_requests.c.request_id.in_(request_ids))
            found = {r.request_id: r for r in map(live_record, conn.execute(query))}
        return [found[i] for i in request_ids]

    def get_hunt(self, hunt_id: str) -> HuntRecord:
        with self._read() as conn:
            row = conn.execute(select(hunts).where(hunts.c.hunt_id == hunt_id)).first()
        if row is None:
            raise NotFound(f"hunt {hunt_id!r} not found", what="hunt", key=hunt_id)
        return _hunt(row)

    def hunt_live_requests(self, hunt_id: str) -> list[LiveRequestRecord]:
        """The hunt's live requests, by host name then agent id."""
        lr = live_requests.c
        query = (
            select(live_requests)
            .join(hunt_requests, hunt_requests.c.request_id == lr.request_id)
            .where(hunt_requests.c.hunt_id == hunt_id)
            .order_by(lr.hostname, lr.agent_id)
        )
        with self._read() as conn:
            return [live_record(r) for r in conn.execute(query)]

    def hunts_created_since(self, created_by: str, since_us: int) -> int:
        c = hunts.c
        query = select(func.count()).select_from(hunts).where(c.created_by == created_by[:32], c.created_at >= since_us)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())
