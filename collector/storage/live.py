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

from sqlalchemy import Connection, Row, bindparam, select, text

from agent.transport.live_states import FINAL_STATES as _FINAL
from agent.transport.live_states import STORED_STATES, LiveState
from collector.storage.agents import _agent
from collector.storage.base import StoreBase
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
class ChannelHolder:
    agent_id: str
    replica_id: str
    peer: str
    connected_at_us: int
    heartbeat_at_us: int


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


def _runs(
    changes: list[tuple[str, str | None]], most: int = 1000
) -> list[tuple[int, list[tuple[str, str | None]]]]:
    """``changes`` cut into runs of one kind (claim: a peer; release: ``None``) without an agent
    twice (one statement cannot upsert a row twice) and of at most ``most`` (bound parameters:
    PostgreSQL takes ≤ 65,535 a statement); each with the index of its first change."""
    runs: list[tuple[int, list[tuple[str, str | None]]]] = []
    seen: set[str] = set()
    for i, (agent_id, peer) in enumerate(changes):
        run = runs[-1][1] if runs else None
        if run is None or (run[0][1] is None) != (peer is None) or agent_id in seen or len(run) >= most:
            runs.append((i, []))
            seen = set()
        runs[-1][1].append((agent_id, peer))
        seen.add(agent_id)
    return runs


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
        """Queued requests of the agents whose channel this replica holds, oldest first."""
        c, h = live_requests.c, agent_channels.c
        held = select(h.agent_id).where(h.replica_id == replica_id)
        queued = str(LiveState.QUEUED)
        query = select(live_requests).where(c.state == queued, c.agent_id.in_(held)).order_by(c.created_at)
        with self._read() as conn:
            return [live_record(r) for r in conn.execute(query)]

    def heartbeat_replica(self, replica_id: str) -> bool:
        """Refresh this replica's one liveness row (one row written, however many agents it
        holds). ``False`` when the row was missing: another replica took this one for dead
        (a long pause) and deleted its channel rows, which the caller must then write again
        (``reclaim_channels``)."""
        now = self._now()
        r = collector_replicas.c
        with self._write() as conn:
            done = conn.execute(collector_replicas.update().where(r.replica_id == replica_id).values(heartbeat_at=now))
            if done.rowcount:
                return True
            ins = self._insert(collector_replicas).values(replica_id=replica_id, started_at=now, heartbeat_at=now)
            conn.execute(ins.on_conflict_do_update(index_elements=[r.replica_id], set_={"heartbeat_at": now}))
        return False

    def forget_replica(self, replica_id: str) -> int:
        """A replica stopping: its row and its channel rows go; returns how many channels."""
        with self._write() as conn:
            n = conn.execute(agent_channels.delete().where(agent_channels.c.replica_id == replica_id)).rowcount
            conn.execute(collector_replicas.delete().where(collector_replicas.c.replica_id == replica_id))
        return int(n)

    def _alive(self, fresh_after_us: int) -> Any:
        """The replicas whose heartbeat is at or after ``fresh_after_us`` (a subquery)."""
        r = collector_replicas.c
        return select(r.replica_id).where(r.heartbeat_at >= fresh_after_us)

    def reap_dead_replicas(self, fresh_after_us: int) -> tuple[int, int]:
        """Delete the rows of replicas without a fresh heartbeat, then their channel rows.

        Nothing depends on it for correctness (a dead replica's channels already count as
        gone); it keeps the tables small. The replica rows go first, each only if still
        stale under its row lock, and only their channels after: a replica that was merely
        paused and heartbeats meanwhile either keeps its row (and its channels) or finds it
        gone and writes its channels again. Returns (channel rows, replica rows) deleted."""
        h, r = agent_channels.c, collector_replicas.c
        with self._write() as conn:
            dead = list(
                conn.execute(
                    collector_replicas.delete().where(r.heartbeat_at < fresh_after_us).returning(r.replica_id)
                ).scalars()
            )
            if not dead:
                return 0, 0
            chans = conn.execute(agent_channels.delete().where(h.replica_id.in_(dead)))
        return int(chans.rowcount), len(dead)

    def reap_orphan_channels(self) -> int:
        """Channel rows naming a replica that has no row at all (left by a collector from
        before the replicas table, or by one whose row was already reaped)."""
        h = agent_channels.c
        known = select(collector_replicas.c.replica_id)
        with self._write() as conn:
            return int(conn.execute(agent_channels.delete().where(h.replica_id.not_in(known))).rowcount)

    def claim_channel(self, agent_id: str, replica_id: str, peer: str, fresh_after_us: int) -> ChannelHolder | None:
        """Record that ``replica_id`` holds the agent's stream (one row written per connect).

        ``None`` on success; the current holder when another replica holds it and that
        replica's heartbeat is at or after ``fresh_after_us`` (the row is then left alone).
        """
        return self.write_channels(replica_id, [(agent_id, peer)], fresh_after_us)[0]

    def reclaim_channels(self, replica_id: str, held: list[tuple[str, str]]) -> int:
        """Write the rows of the streams ``replica_id`` still holds, (agent id, peer) each,
        after its rows were reaped; rows another replica took meanwhile stay its. Returns
        how many were written."""
        if not held:
            return 0
        now = self._now()
        h = agent_channels.c
        rows = [
            {"agent_id": a, "replica_id": replica_id, "peer": p, "connected_at": now, "heartbeat_at": now}
            for a, p in held
        ]
        written = 0
        with self._write() as conn:
            for i in range(0, len(rows), 1000):  # bound parameters per statement: PostgreSQL takes ≤ 65,535
                ins = self._insert(agent_channels).values(rows[i : i + 1000])
                ins = ins.on_conflict_do_nothing(index_elements=[h.agent_id])
                written += len(conn.execute(ins.returning(h.agent_id)).all())
        return written

    def write_channels(
        self, replica_id: str, changes: list[tuple[str, str | None]], fresh_after_us: int
    ) -> list[ChannelHolder | None]:
        """Claims and releases of ``replica_id``'s channel rows, in order, in one transaction
        (``collector.live_pg``: the connects and disconnects of a reconnect storm share a commit).

        ``changes``: ``(agent id, peer)`` claims the row as :meth:`claim_channel` does,
        ``(agent id, None)`` releases it as :meth:`release_channel` does. Runs of claims or
        of releases of distinct agents are one statement each. Returns, per change, ``None``
        (claimed, released) or the live holder that refused the claim."""
        now = self._now()
        h = agent_channels.c
        out: list[ChannelHolder | None] = [None] * len(changes)
        refused: list[int] = []
        with self._write() as conn:
            for start, run in _runs(changes):
                agent_ids = [a for a, _p in run]
                if run[0][1] is None:
                    conn.execute(agent_channels.delete().where(h.replica_id == replica_id, h.agent_id.in_(agent_ids)))
                    continue
                rows = [
                    {"agent_id": a, "replica_id": replica_id, "peer": p, "connected_at": now, "heartbeat_at": now}
                    for a, p in run
                ]
                ins = self._insert(agent_channels).values(rows)
                stmt = ins.on_conflict_do_update(
                    index_elements=[h.agent_id],
                    set_={
                        "replica_id": ins.excluded.replica_id,
                        "peer": ins.excluded.peer,
                        "connected_at": ins.excluded.connected_at,
                        "heartbeat_at": ins.excluded.heartbeat_at,
                    },
                    where=h.replica_id.not_in(self._alive(fresh_after_us)) | (h.replica_id == replica_id),
                ).returning(h.agent_id)
                claimed = set(conn.execute(stmt).scalars())
                refused += [start + i for i, a in enumerate(agent_ids) if a not in claimed]
        for i in refused:  # rare: a second stream of an agent another live replica holds
            out[i] = self.channel_holder(changes[i][0], fresh_after_us)
        return out

    def release_channel(self, agent_id: str, replica_id: str) -> None:
        h = agent_channels.c
        with self._write() as conn:
            conn.execute(agent_channels.delete().where(h.agent_id == agent_id, h.replica_id == replica_id))

    def release_replica_channels(self, replica_id: str) -> int:
        with self._write() as conn:
            return conn.execute(agent_channels.delete().where(agent_channels.c.replica_id == replica_id)).rowcount

    def agents_with_fresh_channels(self, agent_ids: list[str], fresh_after_us: int) -> set[str]:
        """Those of ``agent_ids`` whose stream a replica with a fresh heartbeat holds (one query)."""
        if not agent_ids:
            return set()
        h = agent_channels.c
        query = select(h.agent_id).where(h.agent_id.in_(agent_ids), h.replica_id.in_(self._alive(fresh_after_us)))
        with self._read() as conn:
            return {str(a) for a in conn.execute(query).scalars()}

    def channel_holder(self, agent_id: str, fresh_after_us: int) -> ChannelHolder | None:
        """The replica holding the agent's stream, if that replica's heartbeat is fresh."""
        h, r = agent_channels.c, collector_replicas.c
        query = (
            select(h.agent_id, h.replica_id, h.peer, h.connected_at, r.heartbeat_at)
            .join(collector_replicas, r.replica_id == h.replica_id)
            .where(h.agent_id == agent_id, r.heartbeat_at >= fresh_after_us)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        m = row._mapping
        return ChannelHolder(m["agent_id"], m["replica_id"], m["peer"], m["connected_at"], m["heartbeat_at"])
