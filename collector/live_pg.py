"""Routing live snapshot requests between collector replicas through PostgreSQL.

Same interface as :class:`collector.live_router.LiveRouter`; the services do not know which one
they hold. What changes when several replicas share one database:

- **Who is alive.** Each replica has one row in ``collector_replicas`` and refreshes its
  ``heartbeat_at`` every ``heartbeat_s``: one row written per replica, however many agents
  it holds (at 50,000 agents on 6 replicas, ~1.2 writes a second instead of ~10,000).
- **Who holds which agent.** ``agent_channels`` maps agent id → replica id. A replica
  claims the row when an agent's stream is accepted (refused with ALREADY_EXISTS while
  another live replica holds it) and deletes it when the stream ends; nothing else
  writes it. "Connected" is: the agent has a row, and the replica it names has a
  heartbeat newer than ``stale_s``. A replica that died (SIGKILL) stops its heartbeat;
  after ``stale_s`` all its agents count as gone at once, the next replica an agent
  reaches takes its row over, and the survivors delete the dead replica's rows lazily
  (every ``stale_s``). A replica that was only paused past ``stale_s`` and finds its row
  reaped writes the rows of the streams it still holds again.
- **Who holds which parked agent.** ``agent_doorbells`` maps a parked agent
  (``collector.doorbell``) → the replica holding its doorbell: claimed when it parks
  (committed before it is told so; the newest doorbell wins, whichever replica held the
  row) and deleted when the doorbell closes, if it still names this replica. It counts
  like a channel row (online while that replica's heartbeat is fresh) and goes wherever
  they go: released at start and stop, reaped with a dead replica, written again by a
  paused one. Both tables are written through ``collector.replica_rows.ReplicaRows``.
- **Requests.** Creating or advancing a request writes the row and
  ``NOTIFY casefile_live, '<request id>'`` in one transaction (``collector.storage.live``).
  Every replica LISTENs on a dedicated psycopg connection. On a notification it re-reads
  the row: if the request is ``queued`` for an agent whose stream it holds, it claims
  it (``UPDATE … WHERE state='queued' RETURNING``: exactly one replica wins) and pushes
  it down the stream; if the agent is parked on this replica's doorbell, it rings it (the
  Channel the agent opens, on any replica, drains the queue); if an engineer on this
  replica watches the request, the new state goes to that engineer's stream.
- **Catch-up.** Notifications are lost when the LISTEN connection drops (PostgreSQL
  restart, network). Every ``scan_s`` each replica also claims queued requests of its
  agents (and rings its parked ones that have some) and re-reads the requests its
  engineers watch, so a missed notification costs at most one scan interval, never the
  request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import grpc
import psycopg
from psycopg import sql
from sqlalchemy import make_url

from agent.transport.live_states import LiveState
from collector.edge import Rejected
from collector.live_router import LiveRouter, Session, event_of
from collector.replica_rows import ReplicaRows
from collector.storage import LiveRequestRecord, Store
from collector.storage.live import LIVE_CHANNEL

__all__ = ["PgLiveRouter", "default_replica_id", "libpq_dsn"]

log = logging.getLogger("casefile.collector.live_pg")


def default_replica_id(port: int | None = None) -> str:
    """HOST-PORT once the listening port is known (HOST-PID before)."""
    return f"{socket.gethostname()}-{port if port else os.getpid()}"


def libpq_dsn(db_url: str) -> str:
    """A SQLAlchemy ``postgresql+psycopg://`` URL as a plain libpq connection string."""
    return make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _us(seconds_ago: float) -> int:
    return int((time.time() - seconds_ago) * 1_000_000)


class PgLiveRouter(LiveRouter):
    """A :class:`LiveRouter` for one of several replicas sharing PostgreSQL."""

    def __init__(
        self,
        store: Store,
        dsn: str,
        replica_id: str | None,
        *,
        heartbeat_s: float = 5.0,
        stale_s: float = 15.0,
        scan_s: float = 2.0,
    ) -> None:
        super().__init__(store)
        self._named = replica_id is not None  # by the operator (--replica-id)
        self.replica_id = replica_id or default_replica_id()
        self._dsn = dsn
        self._heartbeat_s = heartbeat_s
        self._stale_s = stale_s
        self._scan_s = scan_s
        self._tasks: list[asyncio.Task[None]] = []
        # What each watched request last showed its engineers: the local advance and the
        # notification of that same change must not produce two events.
        self._shown: dict[str, tuple[int, str]] = {}
        self.listening = asyncio.Event()  # set while the LISTEN connection is up
        self._rows = ReplicaRows(
            lambda replica_id, changes: store.write_channels(replica_id, changes, _us(stale_s)), self.replica_id
        )
        self._bell_rows = ReplicaRows(store.write_doorbells, self.replica_id, "doorbell")

    # -- lifecycle -----------------------------------------------------------------

    def bound_to(self, port: int) -> None:
        """A replica the operator did not name is named after its host and listening port.

        A replica restarted on the same address takes the same name again, so at its start
        it frees the channel rows its predecessor left (a crash, a kill) at once, instead of
        refusing those agents as held until the dead replica's heartbeat is stale (15 s).
        Two live processes cannot share a port: the collector binds without SO_REUSEPORT."""
        if not self._named and port:
            self.replica_id = self._rows.replica_id = self._bell_rows.replica_id = default_replica_id(port)

    async def start(self) -> None:
        # Rows of an earlier process with the same --replica-id are not streams any more.
        await asyncio.to_thread(self._store.release_replica_channels, self.replica_id)
        # Alive before the first stream is accepted: a claim names a replica with a row.
        await asyncio.to_thread(self._store.heartbeat_replica, self.replica_id)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._store.reap_orphan_channels)
        self._tasks = [
            asyncio.create_task(self._listen(), name="live-listen"),
            asyncio.create_task(self._scan(), name="live-scan"),
        ]

    async def aclose(self) -> None:
        # The claims and releases on their way first, so none lands after the rows are forgotten.
        await self._rows.aclose(timeout_s=10.0)
        await self._bell_rows.aclose(timeout_s=10.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._store.forget_replica, self.replica_id)

    # -- streams -------------------------------------------------------------------

    async def connect(self, agent_id: str, peer: str) -> Session:
        session = super().register(agent_id, peer)
        try:
            # Awaited: the refusal must come before the stream is accepted.
            holder = await self._rows.change(agent_id, peer)
        except BaseException:
            # Failed or cancelled: a claim still on its way is undone by the release queued after it.
            self.unregister(session)
            raise
        if holder is not None:
            super().unregister(session)
            raise Rejected(
                grpc.StatusCode.ALREADY_EXISTS,
                f"agent {agent_id} already connected to replica {holder.replica_id} from {holder.peer} — "
                "possibly a cloned machine (two hosts with one agent key); refusing this second stream",
            )
        return session

    def unregister(self, session: Session) -> None:
        mine = self._sessions.get(session.agent_id) is session
        super().unregister(session)
        if mine:
            # Not awaited: a failure leaves the row for the next claim to take over; it still
            # names this replica, so the agent shows connected until then or until this replica stops.
            self._rows.release(session.agent_id)

    # -- parked agents -------------------------------------------------------------

    async def park(self, agent_id: str, bell: Any) -> None:
        """The doorbell's row claimed for this replica (the newest doorbell wins, wherever
        the older one is) and committed before the agent is told it is parked: from then on
        every replica counts it online, and the NOTIFY of a request for it makes this one ring."""
        try:
            await self._bell_rows.change(agent_id, bell.peer)
        except BaseException:
            # Failed or cancelled: undo a claim still on its way, unless an older bell of
            # the agent is parked here (its row is this replica's either way).
            if agent_id not in self._bells:
                self._bell_rows.release(agent_id)
            raise
        await super().park(agent_id, bell)

    def unpark(self, agent_id: str, bell: Any) -> bool:
        if not super().unpark(agent_id, bell):
            return False  # an older bell replaced by a newer one: the row is the newer one's
        # Not awaited; deleted only if it still names this replica.
        self._bell_rows.release(agent_id)
        return True

    async def online_among(self, agent_ids: list[str]) -> set[str]:
        """Those of ``agent_ids`` whose stream or doorbell this or another live replica holds
        (one query)."""
        here = {a for a in agent_ids if self._here(a)}
        rest = [a for a in agent_ids if a not in here]
        elsewhere = await asyncio.to_thread(self._store.agents_with_fresh_channels, rest, _us(self._stale_s))
        return here | elsewhere

    async def is_online(self, agent_id: str) -> bool:
        if self._here(agent_id):
            return True
        holder = await asyncio.to_thread(self._store.channel_holder, agent_id, _us(self._stale_s), parked=True)
        return holder is not None

    # -- requests ------------------------------------------------------------------

    def _publish(self, rec: LiveRequestRecord) -> None:
        watchers = self._watchers.get(rec.request_id)
        if not watchers:
            self._shown.pop(rec.request_id, None)
            return
        mark = (rec.updated_at_us, rec.state)
        last = self._shown.get(rec.request_id)
        if last is not None and (mark == last or mark[0] < last[0]):
            return
        self._shown[rec.request_id] = mark
        event = event_of(rec)
        for q in watchers:
            q.put_nowait(event)

    def unwatch(self, request_id: str, q: asyncio.Queue[Any]) -> None:
        super().unwatch(request_id, q)
        if request_id not in self._watchers:
            self._shown.pop(request_id, None)

    def _sent_to(self, session: Session) -> str:
        return f"sent to {session.peer} via {self.replica_id}"

    async def _on_change(self, request_id: str) -> None:
        interested = request_id in self._watchers
        try:
            rec = await asyncio.to_thread(self._store.get_live_request, request_id)
        except Exception:
            return
        if rec.state == LiveState.QUEUED and self._here(rec.agent_id):
            await self._deliver_or_expire(rec)
        elif interested:
            self._publish(rec)

    async def _deliver_or_expire(self, rec: LiveRequestRecord) -> None:
        if rec.expires_at_us <= _us(0):
            await self.advance(rec.request_id, LiveState.EXPIRED, detail="expired before the agent reconnected")
        else:
            await self.deliver(rec)

    # -- background ------------------------------------------------------------------

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                conn_ = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, connect_timeout=5)
                async with conn_ as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(LIVE_CHANNEL)))
                    self.listening.set()
                    failures = 0
                    log.info("replica %s listening on %s", self.replica_id, LIVE_CHANNEL)
                    # Whatever was notified while we were not listening.
                    await self._catch_up()
                    async for note in conn.notifies():
                        await self._on_change(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("LISTEN connection lost (%s); the scan covers the gap, reconnecting", exc)
            finally:
                self.listening.clear()
            await asyncio.sleep(min(5.0, 0.1 * 2 ** min(failures, 6)))

    async def _scan(self) -> None:
        last_beat = last_reap = time.monotonic()
        while True:
            await asyncio.sleep(self._scan_s)
            try:
                if time.monotonic() - last_beat >= self._heartbeat_s:
                    await self._heartbeat()
                    last_beat = time.monotonic()
                if time.monotonic() - last_reap >= self._stale_s:
                    last_reap = time.monotonic()
                    chans, reps = await asyncio.to_thread(self._store.reap_dead_replicas, _us(self._stale_s))
                    if reps:
                        log.warning("%d replica(s) without a heartbeat for %.0f s: %d channel and doorbell row(s) "
                                    "deleted", reps, self._stale_s, chans)
                await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live catch-up scan failed (%s); retrying in %.0f s", exc, self._scan_s)

    async def _heartbeat(self) -> None:
        if await asyncio.to_thread(self._store.heartbeat_replica, self.replica_id):
            return
        held = [(a, s.peer) for a, s in list(self._sessions.items())]
        parked = [(a, b.peer) for a, b in list(self._bells.items())]
        n = await asyncio.to_thread(self._store.reclaim_channels, self.replica_id, held, parked)
        log.warning("replica %s was taken for dead (no heartbeat for %.0f s); %d of its %d channel and doorbell "
                    "row(s) written again", self.replica_id, self._stale_s, n, len(held) + len(parked))

    async def _catch_up(self) -> None:
        for rec in await asyncio.to_thread(self._store.queued_live_requests_for_replica, self.replica_id):
            if self._here(rec.agent_id):
                await self._deliver_or_expire(rec)
        watched = list(self._watchers)
        for rec in await asyncio.to_thread(self._store.live_requests_by_id, watched):
            self._publish(rec)
