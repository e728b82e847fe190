"""Live snapshot requests: one row per engineer request, its state and result.

The table lives in its own ``MetaData`` so schema version 1 (``create_all`` of the
original tables) stays what it was; migration step 2 creates it. The states are
``agent.transport.live_states.LiveState`` (all but ``timeout``, which is never stored): a
final state never changes again, so a late progress message cannot resurrect a finished
request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, select, text, union

from agent.transport.live_states import FINAL_STATES as _FINAL
from agent.transport.live_states import STORED_STATES, LiveState
from collector.storage.agents import _agent
from collector.storage.channels import ChannelHolder, ChannelMethods
from collector.storage.doorbells_schema import agent_doorbells
from collector.storage.errors import InvalidArgument, NotFound
from collector.storage.live_schema import (
    agent_channels,
    create_channel_tables,
    create_live_tables,
    live_metadata,
    live_requests,
    replica_metadata,
)
from collector.storage.replicas_schema import collector_replicas
from collector.storage.schema import AgentRecord, agents, from_micros, to_micros

__all__ = [
    "FINAL_STATES",
    "LIVE_CHANNEL",
    "LIVE_STATES",
    "ChannelHolder",
    "LiveMethods",
    "LiveRequestRecord",
    "agent_channels",
    "collector_replicas",
    "create_channel_tables",
    "create_live_tables",
    "live_metadata",
    "live_record",
    "live_requests",
    "replica_metadata",
]

# Built once: a hunt's delivery claims a hundred requests per transaction, and building
# the statement per row cost more CPU than the update, all of it under the writer lock.
_CLAIM = (
    live_requests.update()
    .where(live_requests.c.request_id == bindparam("r_id"), live_requests.c.state == str(LiveState.QUEUED))
    .values(state=str(LiveState.DELIVERED), detail=bindparam("r_detail"), updated_at=bindparam("r_now"))
    .returning(*live_requests.c)
)

# The PostgreSQL NOTIFY channel of live requests; the payload is the request id.
LIVE_CHANNEL = "casefile_live"

# The states (``agent.transport.live_states``), as the plain strings the column holds.
LIVE_STATES: tuple[str, ...] = tuple(str(s) for s in STORED_STATES)
FINAL_STATES: frozenset[str] = frozenset(str(s) for s in _FINAL)


@dataclass(frozen=True)
class LiveRequestRecord:
    request_id: str
    agent_id: str
    hostname: str
    requested_by: str
    requested_label: str
    scopes: tuple[str, ...]
    since_s: int
    reason: str
    state: str
    detail: str
    bundle_id: str | None
    created_at_us: int
    expires_at_us: int
    updated_at_us: int

    @property
    def expires_at(self) -> datetime:
        return from_micros(self.expires_at_us)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def live_record(row: Row[Any]) -> LiveRequestRecord:
    m = row._mapping
    return LiveRequestRecord(
        request_id=m["request_id"],
        agent_id=m["agent_id"],
        hostname=m["hostname"],
        requested_by=m["requested_by"],
        requested_label=m["requested_label"],
        scopes=tuple(s for s in str(m["scopes"]).split(",") if s),
        since_s=int(m["since_s"]),
        reason=m["reason"],
        state=m["state"],
        detail=m["detail"],
        bundle_id=m["bundle_id"],
        created_at_us=m["created_at"],
        expires_at_us=m["expires_at"],
        updated_at_us=m["updated_at"],
    )


class LiveMethods(ChannelMethods):
    """Creating, advancing and finding live snapshot requests."""

    def create_live_request(
        self,
        *,
        agent_id: str,
        hostname: str,
        requested_by: str,
        requested_label: str,
        scopes: tuple[str, ...],
        since_s: int,
        reason: str,
        expires_at: datetime,
    ) -> LiveRequestRecord:
        if any("," in s or not s for s in scopes):
            raise InvalidArgument(f"scopes {scopes!r}: names must be non-empty and without commas")
        now = self._now()
        values = {
            "request_id": secrets.token_hex(16),
            "agent_id": agent_id,
            "hostname": hostname,
            "requested_by": requested_by[:32],
            "requested_label": requested_label,
            "scopes": ",".join(scopes),
            "since_s": since_s,
            "reason": reason,
            "state": str(LiveState.QUEUED),
            "detail": "",
            "bundle_id": None,
            "created_at": now,
            "expires_at": to_micros(expires_at),
            "updated_at": now,
        }
        with self._write() as conn:
            row = conn.execute(live_requests.insert().values(values).returning(*live_requests.c)).one()
            self._notify_live(conn, row._mapping["request_id"])
        return live_record(row)

    def get_live_request(self, request_id: str) -> LiveRequestRecord:
        with self._read() as conn:
            row = conn.execute(select(live_requests).where(live_requests.c.request_id == request_id)).first()
        if row is None:
            raise NotFound(f"live request {request_id!r} not found", what="live request", key=request_id)
        return live_record(row)

    def advance_live_request(
        self, request_id: str, state: str, *, detail: str = "", bundle_id: str | None = None, agent_id: str = ""
    ) -> LiveRequestRecord | None:
        """Move a request (of ``agent_id``, if given) to ``state``; ``None`` when it is
        unknown, another agent's or already final."""
        if state not in LIVE_STATES:
            known = ", ".join(LIVE_STATES)
            raise InvalidArgument(f"live request state {str(state)!r} unknown; expected one of {known}")
        c = live_requests.c
        values: dict[str, Any] = {"state": str(state), "detail": detail[:2000], "updated_at": self._now()}
        if bundle_id is not None:
            values["bundle_id"] = bundle_id

        def advance(conn: Connection) -> Any:
            row = conn.execute(
                live_requests.update()
                .where(c.request_id == request_id, c.state.not_in(FINAL_STATES))
                .where(*([c.agent_id == agent_id] if agent_id else []))
                .values(values)
                .returning(*live_requests.c)
            ).first()
            if row is not None:
                self._notify_live(conn, request_id)
            return row

        row = self._write_grouped(advance)
        return None if row is None else live_record(row)

    def queued_live_requests(self, agent_id: str) -> list[LiveRequestRecord]:
        """Requests still waiting for this agent, oldest first."""
        c = live_requests.c
        queued = str(LiveState.QUEUED)
        query = select(live_requests).where(c.agent_id == agent_id, c.state == queued).order_by(c.created_at)
        with self._read() as conn:
            return [live_record(r) for r in conn.execute(query)]

    def agents_by_hostname(self, hostname: str) -> list[AgentRecord]:
        """Enrolled agents reporting this hostname, most recently seen first."""
        c = agents.c
        query = select(agents).where(c.hostname == hostname).order_by(c.last_seen_at.desc().nulls_last(), c.id)
        with self._read() as conn:
            return [_agent(r) for r in conn.execute(query)]

    # -- replicas (PostgreSQL) ---------------------------------------------------

    def _notify_live(self, conn: Connection, request_id: str) -> None:
        # In the writing transaction: PostgreSQL delivers it only on commit, so a
        # listener that reads the row after the notification always sees the change.
        if self._pg:
            conn.execute(text("SELECT pg_notify(:ch, :rid)"), {"ch": LIVE_CHANNEL, "rid": request_id})

    def claim_live_request(self, request_id: str, detail: str) -> LiveRequestRecord | None:
        """``queued`` → ``delivered``; exactly one caller gets the record, the rest ``None``."""
        with self._write() as conn:
            row = conn.execute(_CLAIM, {"r_id": request_id, "r_detail": detail[:2000], "r_now": self._now()}).first()
            if row is not None:
                self._notify_live(conn, request_id)
        return None if row is None else live_record(row)

    def claim_live_requests(self, claims: list[tuple[str, str]]) -> list[LiveRequestRecord]:
        """:meth:`claim_live_request` for each ``(request id, detail)`` in one transaction
        (a hunt's delivery); the records of those this call moved to ``delivered``."""
        now = self._now()
        claimed = []
        with self._write() as conn:
            for request_id, detail in claims:
                row = conn.execute(_CLAIM, {"r_id": request_id, "r_detail": detail[:2000], "r_now": now}).first()
                if row is not None:
                    claimed.append(live_record(row))
                    self._notify_live(conn, request_id)
        return claimed

    def live_requests_by_id(self, request_ids: list[str]) -> list[LiveRequestRecord]:
        if not request_ids:
            return []
        with self._read() as conn:
            rows = conn.execute(select(live_requests).where(live_requests.c.request_id.in_(request_ids)))
            return [live_record(r) for r in rows]

    def queued_live_requests_for_replica(self, replica_id: str) -> list[LiveRequestRecord]:
        """Queued requests of the agents whose channel or doorbell this replica holds
        (the ones to send, the parked ones to ring), oldest first."""
        c, h, d = live_requests.c, agent_channels.c, agent_doorbells.c
        held = union(
            select(h.agent_id).where(h.replica_id == replica_id),
            select(d.agent_id).where(d.replica_id == replica_id),
        )
        queued = str(LiveState.QUEUED)
        query = select(live_requests).where(c.state == queued, c.agent_id.in_(held)).order_by(c.created_at)
        with self._read() as conn:
            return [live_record(r) for r in conn.execute(query)]
