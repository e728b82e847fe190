"""Which replica holds which agent's channel or doorbell, and which replicas are alive.

One row per replica (``collector_replicas``), refreshed by its heartbeat, one row per
connected agent (``agent_channels``), written only when an agent connects or leaves: at
50,000 agents a heartbeat per channel row would be ~10,000 row updates a second, and one
per parked agent (``agent_doorbells``), written only when it parks or its doorbell closes.
Either row counts only while its replica's heartbeat is fresh; wherever a replica's
channel rows are released, reaped or written again, its doorbell rows are too.
``collector.live_pg`` routes live requests with these; ``collector.storage.live`` builds
on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import literal, select, union, union_all

from collector.storage.base import StoreBase
from collector.storage.doorbells_schema import agent_doorbells
from collector.storage.live_schema import agent_channels
from collector.storage.replicas_schema import collector_replicas

__all__ = ["ChannelHolder", "ChannelMethods"]


@dataclass(frozen=True)
class ChannelHolder:
    agent_id: str
    replica_id: str
    peer: str
    connected_at_us: int  # for a parked agent: when it parked
    heartbeat_at_us: int
    parked: bool = False  # the replica holds the agent's doorbell, not its stream


def _runs(changes: list[tuple[str, str | None]], most: int = 1000) -> list[tuple[int, list[tuple[str, str | None]]]]:
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


class ChannelMethods(StoreBase):
    """Replica liveness and the channel rows of the agents each replica holds."""

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
        """A replica stopping: its row, its channel rows and its doorbell rows go; returns how
        many channels."""
        with self._write() as conn:
            n = conn.execute(agent_channels.delete().where(agent_channels.c.replica_id == replica_id)).rowcount
            conn.execute(agent_doorbells.delete().where(agent_doorbells.c.replica_id == replica_id))
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
        gone and writes its channels again. Returns (channel and doorbell rows, replica rows)
        deleted."""
        h, r = agent_channels.c, collector_replicas.c
        with self._write() as conn:
            dead = list(
                conn.execute(
                    collector_replicas.delete().where(r.heartbeat_at < fresh_after_us).returning(r.replica_id)
                ).scalars()
            )
            if not dead:
                return 0, 0
            chans = conn.execute(agent_channels.delete().where(h.replica_id.in_(dead))).rowcount
            bells = conn.execute(agent_doorbells.delete().where(agent_doorbells.c.replica_id.in_(dead))).rowcount
        return int(chans) + int(bells), len(dead)

    def reap_orphan_channels(self) -> int:
        """Channel and doorbell rows naming a replica that has no row at all (left by a
        collector from before the replicas table, or by one whose row was already reaped)."""
        known = select(collector_replicas.c.replica_id)
        with self._write() as conn:
            n = conn.execute(agent_channels.delete().where(agent_channels.c.replica_id.not_in(known))).rowcount
            n += conn.execute(agent_doorbells.delete().where(agent_doorbells.c.replica_id.not_in(known))).rowcount
        return int(n)

    def claim_channel(self, agent_id: str, replica_id: str, peer: str, fresh_after_us: int) -> ChannelHolder | None:
        """Record that ``replica_id`` holds the agent's stream (one row written per connect).

        ``None`` on success; the current holder when another replica holds it and that
        replica's heartbeat is at or after ``fresh_after_us`` (the row is then left alone).
        """
        return self.write_channels(replica_id, [(agent_id, peer)], fresh_after_us)[0]

    def reclaim_channels(
        self, replica_id: str, held: list[tuple[str, str]], parked: list[tuple[str, str]] | None = None
    ) -> int:
        """Write the rows of the streams ``replica_id`` still holds and of the doorbells
        it still holds (``parked``), (agent id, peer) each, after its rows were reaped; rows
        another replica took meanwhile stay its (a doorbell written there since is newer).
        Returns how many were written."""
        now = self._now()
        streams = [
            {"agent_id": a, "replica_id": replica_id, "peer": p, "connected_at": now, "heartbeat_at": now}
            for a, p in held
        ]
        bells = [{"agent_id": a, "replica_id": replica_id, "peer": p, "parked_at": now} for a, p in parked or []]
        if not streams and not bells:
            return 0
        written = 0
        with self._write() as conn:
            for table, rows in ((agent_channels, streams), (agent_doorbells, bells)):
                for i in range(0, len(rows), 1000):  # bound parameters per statement: PostgreSQL takes ≤ 65,535
                    ins = self._insert(table).values(rows[i : i + 1000])
                    ins = ins.on_conflict_do_nothing(index_elements=[table.c.agent_id])
                    written += len(conn.execute(ins.returning(table.c.agent_id)).all())
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

    def write_doorbells(self, replica_id: str, changes: list[tuple[str, str | None]]) -> list[ChannelHolder | None]:
        """Parks and doorbell closes of ``replica_id``, in order, in one transaction
        (``collector.live_pg``, as :meth:`write_channels` for streams).

        ``(agent id, peer)`` claims the agent's doorbell row for this replica whichever
        replica held it (the newest doorbell of an agent wins: it dials again only when its
        old connection died unnoticed); ``(agent id, None)`` deletes the row only if this
        replica holds it, so an old doorbell closing late never removes the newer one's."""
        now = self._now()
        d = agent_doorbells.c
        with self._write() as conn:
            for _start, run in _runs(changes):
                agent_ids = [a for a, _p in run]
                if run[0][1] is None:
                    conn.execute(agent_doorbells.delete().where(d.replica_id == replica_id, d.agent_id.in_(agent_ids)))
                    continue
                ins = self._insert(agent_doorbells).values(
                    [{"agent_id": a, "replica_id": replica_id, "peer": p, "parked_at": now} for a, p in run]
                )
                conn.execute(
                    ins.on_conflict_do_update(
                        index_elements=[d.agent_id],
                        set_={"replica_id": ins.excluded.replica_id, "peer": ins.excluded.peer,
                              "parked_at": ins.excluded.parked_at},
                    )
                )
        return [None] * len(changes)  # never refused: the shape of write_channels' answer

    def release_channel(self, agent_id: str, replica_id: str) -> None:
        h = agent_channels.c
        with self._write() as conn:
            conn.execute(agent_channels.delete().where(h.agent_id == agent_id, h.replica_id == replica_id))

    def release_replica_channels(self, replica_id: str) -> int:
        """Delete the channel and doorbell rows of ``replica_id`` (an earlier process of that
        name: none of them is a connection any more); returns how many."""
        with self._write() as conn:
            n = conn.execute(agent_channels.delete().where(agent_channels.c.replica_id == replica_id)).rowcount
            n += conn.execute(agent_doorbells.delete().where(agent_doorbells.c.replica_id == replica_id)).rowcount
        return int(n)

    def agents_with_fresh_channels(self, agent_ids: list[str], fresh_after_us: int) -> set[str]:
        """Those of ``agent_ids`` whose stream or doorbell a replica with a fresh heartbeat
        holds: the online ones (one query)."""
        if not agent_ids:
            return set()
        h, d = agent_channels.c, agent_doorbells.c
        alive = self._alive(fresh_after_us)
        query = union(
            select(h.agent_id).where(h.agent_id.in_(agent_ids), h.replica_id.in_(alive)),
            select(d.agent_id).where(d.agent_id.in_(agent_ids), d.replica_id.in_(alive)),
        )
        with self._read() as conn:
            return {str(a) for a in conn.execute(query).scalars()}

    def channel_holder(self, agent_id: str, fresh_after_us: int, *, parked: bool = False) -> ChannelHolder | None:
        """The replica holding the agent's stream, if that replica's heartbeat is fresh; with
        ``parked``, else the one holding its doorbell (``ChannelHolder.parked``) — the agent
        is online either way (one query)."""
        h, d, r = agent_channels.c, agent_doorbells.c, collector_replicas.c
        stream = (
            select(h.agent_id, h.replica_id, h.peer, h.connected_at, r.heartbeat_at, literal(False).label("parked"))
            .join(collector_replicas, r.replica_id == h.replica_id)
            .where(h.agent_id == agent_id, r.heartbeat_at >= fresh_after_us)
        )
        query: Any = stream
        if parked:
            query = union_all(
                stream,
                select(d.agent_id, d.replica_id, d.peer, d.parked_at, r.heartbeat_at, literal(True).label("parked"))
                .join(collector_replicas, r.replica_id == d.replica_id)
                .where(d.agent_id == agent_id, r.heartbeat_at >= fresh_after_us),
            )
        with self._read() as conn:
            rows = sorted(conn.execute(query).all(), key=lambda row: bool(row[5]))  # a stream first
        if not rows:
            return None
        a, rep_id, peer, at, beat, is_parked = rows[0]
        return ChannelHolder(str(a), str(rep_id), str(peer), int(at), int(beat), bool(is_parked))
