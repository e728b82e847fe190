"""Live snapshot requests: one row per engineer request, its state and result.

The table lives in its own ``MetaData`` so schema version 1 (``create_all`` of the
original tables) stays what it was; migration step 2 creates it. States:

``queued`` (waiting for the agent's channel) → ``delivered`` (sent down the stream)
→ ``collecting`` → ``uploading`` → ``done`` (with bundle id); or a final
``denied`` / ``failed`` / ``expired`` / ``offline``. A final state never changes again,
so a late progress message cannot resurrect a finished request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, Index, Integer, MetaData, Row, String, Table, Text, select

from collector.storage.agents import _agent
from collector.storage.base import StoreBase
from collector.storage.errors import InvalidArgument, NotFound
from collector.storage.schema import AgentRecord, agents, from_micros, to_micros

__all__ = [
    "FINAL_STATES",
    "LIVE_STATES",
    "LiveMethods",
    "LiveRequestRecord",
    "create_live_tables",
    "live_metadata",
    "live_requests",
]

LIVE_STATES = (
    "queued",
    "delivered",
    "collecting",
    "uploading",
    "done",
    "denied",
    "failed",
    "expired",
    "offline",
)
FINAL_STATES = frozenset({"done", "denied", "failed", "expired", "offline"})

live_metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

live_requests = Table(
    "live_requests",
    live_metadata,
    Column("request_id", String(32), primary_key=True),
    Column("agent_id", String(32), nullable=False),
    Column("hostname", Text, nullable=False),
    Column("requested_by", String(32), nullable=False),  # engineer token id
    Column("requested_label", Text, nullable=False),
    Column("scopes", Text, nullable=False),  # comma-separated
    Column("since_s", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Column("bundle_id", String(32), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index(None, "agent_id", "state"),
)


def create_live_tables(conn: Connection) -> None:
    """Migration step 2."""
    live_metadata.create_all(conn)


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


def _rec(row: Row[Any]) -> LiveRequestRecord:
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


class LiveMethods(StoreBase):
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
            "state": "queued",
            "detail": "",
            "bundle_id": None,
            "created_at": now,
            "expires_at": to_micros(expires_at),
            "updated_at": now,
        }
        with self._write() as conn:
            row = conn.execute(live_requests.insert().values(values).returning(*live_requests.c)).one()
        return _rec(row)

    def get_live_request(self, request_id: str) -> LiveRequestRecord:
        with self._read() as conn:
            row = conn.execute(select(live_requests).where(live_requests.c.request_id == request_id)).first()
        if row is None:
            raise NotFound(f"live request {request_id!r} not found", what="live request", key=request_id)
        return _rec(row)

    def advance_live_request(
        self, request_id: str, state: str, *, detail: str = "", bundle_id: str | None = None
    ) -> LiveRequestRecord | None:
        """Move a request to ``state``; ``None`` when it is unknown or already final."""
        if state not in LIVE_STATES:
            raise InvalidArgument(f"live request state {state!r} unknown; expected one of {LIVE_STATES}")
        c = live_requests.c
        values: dict[str, Any] = {"state": state, "detail": detail[:2000], "updated_at": self._now()}
        if bundle_id is not None:
            values["bundle_id"] = bundle_id
        with self._write() as conn:
            row = conn.execute(
                live_requests.update()
                .where(c.request_id == request_id, c.state.not_in(FINAL_STATES))
                .values(values)
                .returning(*live_requests.c)
            ).first()
        return None if row is None else _rec(row)

    def queued_live_requests(self, agent_id: str) -> list[LiveRequestRecord]:
        """Requests still waiting for this agent, oldest first."""
        c = live_requests.c
        query = select(live_requests).where(c.agent_id == agent_id, c.state == "queued").order_by(c.created_at)
        with self._read() as conn:
            return [_rec(r) for r in conn.execute(query)]

    def agents_by_hostname(self, hostname: str) -> list[AgentRecord]:
        """Enrolled agents reporting this hostname, most recently seen first."""
        c = agents.c
        query = select(agents).where(c.hostname == hostname).order_by(c.last_seen_at.desc().nulls_last(), c.id)
        with self._read() as conn:
            return [_agent(r) for r in conn.execute(query)]
