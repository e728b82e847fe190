"""The metadata store: tokens, agents, bundles, hosts and the audit log.

``Store`` is synchronous (SQLAlchemy Core, one engine); the asyncio services
call it through ``asyncio.to_thread``. Every method is one short transaction.
The method groups live in their own modules (``tokens``, ``agents``,
``audit``, ``live``, ``stats``, ``refusals``); this one holds opening the store, bundles and hosts.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Executable, Select, and_, bindparam, case, or_, select
from sqlalchemy.exc import IntegrityError, OperationalError

from agent.bundle.names import is_bundle_id, is_sha256
from agent.transport.live_states import LiveState
from collector.storage.agents import AgentMethods, _agent
from collector.storage.audit import AuditMethods
from collector.storage.base import Clock, make_engine, utc_now
from collector.storage.case_activity_schema import case_activity, case_hosts
from collector.storage.case_list import CaseListMethods
from collector.storage.cases import CaseMethods
from collector.storage.cursors import (
    clamp_page_size,
    decode_bundle_cursor,
    decode_host_cursor,
    encode_bundle_cursor,
    encode_host_cursor,
)
from collector.storage.errors import Conflict, InvalidArgument, NotFound, StoreError
from collector.storage.findings import FindingsMethods
from collector.storage.hunts import HuntMethods
from collector.storage.live import FINAL_STATES, LiveMethods, LiveRequestRecord, live_record
from collector.storage.live_schema import live_requests
from collector.storage.migrations import migrate
from collector.storage.refusals import RefusalMethods
from collector.storage.schema import (
    AgentRecord,
    BundleRecord,
    HostRecord,
    agents,
    bundles,
    host_agents,
    hosts,
    to_micros,
)
from collector.storage.sessions import SessionMethods
from collector.storage.specs import SpecMethods
from collector.storage.stats import StatsMethods
from collector.storage.text import clip
from collector.storage.tokens import TokenMethods

__all__ = ["Store"]

# Every bundle column except the two large ones, for listings.
_SUMMARY = [c for c in bundles.c if c.name not in ("facts_pb", "manifest_json")]

# Statements every upload runs, built once with their values as parameters: building a
# statement per call (``.values(...)``, ``case(...)``) and SQLAlchemy deriving its cache
# key each time cost more of the collector's CPU than SQLite itself, at a thousand
# uploads at once (benchmarks/bench_hunt.py).
_BUNDLE_BY_ID = select(*_SUMMARY).where(bundles.c.bundle_id == bindparam("b_id"))
_AGENT_BY_ID = select(agents).where(agents.c.id == bindparam("a_id"))


@dataclass(frozen=True)
class _IngestStatements:
    """The writes of :meth:`Store.insert_bundle_answering`, for one dialect."""

    bundle: Executable
    host: Executable
    host_agent: Executable
    case_host: Executable
    case_activity: Executable
    answered: Executable


def _bundle(m: Mapping[Any, Any]) -> BundleRecord:
    return BundleRecord(
        bundle_id=m["bundle_id"],
        agent_id=m["agent_id"],
        hostname=m["hostname"],
        case_id=m["case_id"],
        kind=m["kind"],
        created_at_us=m["created_at"],
        received_at_us=m["received_at"],
        size=m["size"],
        sha256=m["sha256"],
        key_fingerprint=m["key_fingerprint"],
        agent_version=m["agent_version"],
        file_name=m["file_name"],
        collectors_ok=m["collectors_ok"],
        collectors_failed=m["collectors_failed"],
        blob_key=m["blob_key"],
        os=m["os"],
        origin_fingerprint=m["origin_fingerprint"],
        collectors_skipped=m["collectors_skipped"],
    )


class Store(
    TokenMethods,
    AgentMethods,
    CaseMethods,
    CaseListMethods,
    AuditMethods,
    LiveMethods,
    StatsMethods,
    RefusalMethods,
    FindingsMethods,
    HuntMethods,
    SpecMethods,
    SessionMethods,
):
    """Metadata for the collector. Open with ``Store.open(url)``; close when done."""

    @classmethod
    def open(cls, url: str, *, clock: Clock | None = None) -> Store:
        """Connect and migrate to the current schema. ``clock`` is for tests."""
        engine = make_engine(url)
        where = engine.url.render_as_string(hide_password=True)
        try:
            migrate(engine, where)
        except OperationalError as exc:
            engine.dispose()
            raise StoreError(f"cannot open metadata store {where}: {exc.orig}") from exc
        except BaseException:
            engine.dispose()
            raise
        store = cls(engine, clock=clock or utc_now)
        store.refresh_statistics()
        return store

    def insert_bundle(self, rec: BundleRecord, *, facts_pb: bytes, manifest_json: str) -> tuple[BundleRecord, bool]:
        """Store a bundle's metadata and update its host, in one transaction.

        Returns ``(stored, inserted)``. The same id with the same sha256 again is
        not an error: it returns the stored record and ``False``. The same id with
        another sha256 raises ``Conflict``.
        """
        stored, inserted, _ = self.insert_bundle_answering(rec, facts_pb=facts_pb, manifest_json=manifest_json)
        return stored, inserted

    def insert_bundle_answering(
        self, rec: BundleRecord, *, facts_pb: bytes, manifest_json: str, request_id: str = ""
    ) -> tuple[BundleRecord, bool, LiveRequestRecord | None]:
        """:meth:`insert_bundle`, and in the same transaction the live request
        ``request_id`` the bundle answers (if any, of the bundle's agent, not final yet)
        moved to ``done`` naming the bundle: ``(stored, inserted, that request)``, the
        request ``None`` when nothing was moved. The request is never ``done`` before its
        bundle can be read, and one commit (one fsync) serves both."""
        if not is_bundle_id(rec.bundle_id):
            raise InvalidArgument(f"bundle id {clip(rec.bundle_id, 80)!r} is not 32 lowercase hex digits")
        if not is_sha256(rec.sha256):
            raise InvalidArgument(f"bundle {rec.bundle_id}: sha256 is not a lowercase hex digest")
        if rec.size < 0 or not rec.hostname or not rec.blob_key:
            raise InvalidArgument(f"bundle {rec.bundle_id}: needs hostname, blob_key and size >= 0")
        values: dict[str, Any] = {
            c.name: getattr(rec, c.name) for c in _SUMMARY if c.name not in ("created_at", "received_at")
        }
        values.update(
            case_id=rec.case_id or None,
            created_at=rec.created_at_us,
            received_at=rec.received_at_us,
        )
        stored = _bundle(values)
        st = self._ingest_statements
        row = {**values, "facts_pb": facts_pb, "manifest_json": manifest_json}
        done = self._answered(request_id, rec.agent_id, rec.bundle_id) if request_id else None

        def insert(conn: Connection) -> tuple[BundleRecord, bool, Any]:
            if conn.execute(st.bundle, row).first() is not None:
                self._upsert_host(conn, stored)
                result, inserted = stored, True
            else:
                existing = conn.execute(_BUNDLE_BY_ID, {"b_id": rec.bundle_id}).one()
                result, inserted = _bundle(existing._mapping), False
            live = None
            if done is not None and result.sha256 == rec.sha256 and result.agent_id == rec.agent_id:
                live = conn.execute(st.answered, done).first()
                if live is not None:
                    self._notify_live(conn, request_id)
            return result, inserted, live

        try:
            # Shares its commit with the writes waiting meanwhile; on disk when this returns.
            stored, inserted, live = self._write_grouped(insert)
        except IntegrityError as exc:
            self.get_agent(rec.agent_id)  # NotFound names the unknown agent
            raise StoreError(f"bundle {rec.bundle_id} could not be stored: {exc.orig}") from exc
        if inserted:
            self._rows_inserted("bundles")
        elif stored.sha256 != rec.sha256:
            raise Conflict(
                f"bundle {rec.bundle_id} is already stored with sha256 {stored.sha256}, not {rec.sha256}",
                key=rec.bundle_id,
            )
        return stored, inserted, None if live is None else live_record(live)

    @functools.cached_property
    def _ingest_statements(self) -> _IngestStatements:
        """Built on first use: the insert constructs are the dialect's own."""
        b_ins = self._insert(bundles)
        h_ins = self._insert(hosts)
        new, old = h_ins.excluded, hosts.c
        # The newest bundle (by creation time, then id, as listings order them) names
        # the host's last bundle and OS, whatever order the uploads arrive in.
        newer = or_(
            new.last_seen > old.last_seen,
            and_(new.last_seen == old.last_seen, new.last_bundle_id > old.last_bundle_id),
        )
        host = h_ins.on_conflict_do_update(
            index_elements=["hostname"],
            set_={
                "bundle_count": old.bundle_count + 1,
                "first_seen": case((new.first_seen < old.first_seen, new.first_seen), else_=old.first_seen),
                "last_seen": case((newer, new.last_seen), else_=old.last_seen),
                "last_bundle_id": case((newer, new.last_bundle_id), else_=old.last_bundle_id),
                "os": case((and_(newer, new.os != ""), new.os), else_=old.os),
            },
        )
        act = self._insert(case_activity)
        cur = case_activity.c
        activity = act.on_conflict_do_update(
            index_elements=["case_id"],
            set_={
                "bundle_count": cur.bundle_count + 1,
                "last_created_at": case(
                    (act.excluded.last_created_at > cur.last_created_at, act.excluded.last_created_at),
                    else_=cur.last_created_at,
                ),
            },
        )
        c = live_requests.c
        answered = (
            live_requests.update()
            .where(
                c.request_id == bindparam("r_id"),
                c.agent_id == bindparam("r_agent"),
                c.state.not_in(sorted(FINAL_STATES)),
            )
            .values(
                state=str(LiveState.DONE),
                detail=bindparam("r_detail"),
                bundle_id=bindparam("r_bundle"),
                updated_at=bindparam("r_at"),
            )
            .returning(*live_requests.c)
        )
        return _IngestStatements(
            bundle=b_ins.on_conflict_do_nothing(index_elements=["bundle_id"]).returning(bundles.c.bundle_id),
            host=host,
            host_agent=self._insert(host_agents).on_conflict_do_nothing(),
            case_host=self._insert(case_hosts).on_conflict_do_nothing(),
            case_activity=activity,
            answered=answered,
        )

    def _answered(self, request_id: str, agent_id: str, bundle_id: str) -> dict[str, Any]:
        """The parameters moving ``request_id`` of ``agent_id`` to ``done`` with ``bundle_id``."""
        return {
            "r_id": request_id,
            "r_agent": agent_id,
            "r_detail": f"bundle {bundle_id} stored",
            "r_bundle": bundle_id,
            "r_at": self._now(),
        }

    def _upsert_host(self, conn: Connection, rec: BundleRecord) -> None:
        st = self._ingest_statements
        created = rec.created_at_us
        conn.execute(
            st.host,
            {
                "hostname": rec.hostname,
                "first_seen": created,
                "last_seen": created,
                "bundle_count": 1,
                "last_bundle_id": rec.bundle_id,
                "os": rec.os,
            },
        )
        conn.execute(st.host_agent, {"hostname": rec.hostname, "agent_id": rec.agent_id})
        if rec.case_id:
            conn.execute(st.case_host, {"case_id": rec.case_id, "hostname": rec.hostname})
            conn.execute(st.case_activity, {"case_id": rec.case_id, "last_created_at": created, "bundle_count": 1})

    def get_bundle(self, bundle_id: str) -> BundleRecord:
        with self._read() as conn:
            row = conn.execute(_BUNDLE_BY_ID, {"b_id": bundle_id}).first()
        if row is None:
            raise NotFound(f"bundle {clip(bundle_id, 80)!r} not found", what="bundle", key=bundle_id)
        return _bundle(row._mapping)

    def agent_and_bundle(self, agent_id: str, bundle_id: str) -> tuple[AgentRecord, BundleRecord | None]:
        """``get_agent`` and the bundle ``bundle_id`` (None if not stored) in one read:
        what an upload's first checks need (``collector.upload_auth.authorize_upload``)."""
        with self._read() as conn:
            agent = conn.execute(_AGENT_BY_ID, {"a_id": agent_id}).first()
            if agent is None:
                raise NotFound(f"agent {agent_id!r} not found", what="agent", key=agent_id)
            row = conn.execute(_BUNDLE_BY_ID, {"b_id": bundle_id}).first()
        return _agent(agent), None if row is None else _bundle(row._mapping)

    def get_bundle_content(self, bundle_id: str) -> tuple[bytes, str]:
        """``(facts_pb, manifest_json)`` of a stored bundle."""
        with self._read() as conn:
            row = conn.execute(
                select(bundles.c.facts_pb, bundles.c.manifest_json).where(bundles.c.bundle_id == bundle_id)
            ).first()
        if row is None:
            raise NotFound(f"bundle {clip(bundle_id, 80)!r} not found", what="bundle", key=bundle_id)
        return bytes(row.facts_pb), str(row.manifest_json)

    def list_bundles(
        self,
        *,
        hostname: str | None = None,
        case_id: str | None = None,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 100,
        cursor: str | None = None,
        without_case: bool = False,
    ) -> tuple[list[BundleRecord], str | None]:
        """A page of bundles, newest first; pass the returned cursor for the next page.

        ``since`` is inclusive, ``until`` exclusive (both on ``created_at``). The
        next cursor is ``None`` on the last page; an empty cursor means the first.
        ``without_case``: only bundles outside any case (the case index's NULL range).
        """
        b = bundles.c
        size = clamp_page_size(page_size)
        query: Select[Any] = select(*_SUMMARY)
        if hostname is not None:
            query = query.where(b.hostname == hostname)
        if case_id is not None:
            query = query.where(b.case_id == case_id)
        elif without_case:
            query = query.where(b.case_id.is_(None))
        if agent_id is not None:
            query = query.where(b.agent_id == agent_id)
        if since is not None:
            query = query.where(b.created_at >= to_micros(since))
        if until is not None:
            query = query.where(b.created_at < to_micros(until))
        if cursor:
            at, last_id = decode_bundle_cursor(cursor)
            # The redundant "<=" bounds the index range scan; the OR picks up
            # rows that share the cursor's timestamp.
            query = query.where(b.created_at <= at, or_(b.created_at < at, b.bundle_id < last_id))
        query = query.order_by(b.created_at.desc(), b.bundle_id.desc()).limit(size + 1)
        with self._read() as conn:
            rows = [_bundle(r._mapping) for r in conn.execute(query)]
        if len(rows) <= size:
            return rows, None
        rows = rows[:size]
        last = rows[-1]
        return rows, encode_bundle_cursor(last.created_at_us, last.bundle_id)

    def list_hosts(self, page_size: int = 100, cursor: str | None = None) -> tuple[list[HostRecord], str | None]:
        """A page of hosts ordered by hostname, with the agents seen on each."""
        size = clamp_page_size(page_size)
        query = select(hosts).order_by(hosts.c.hostname).limit(size + 1)
        if cursor:
            query = query.where(hosts.c.hostname > decode_host_cursor(cursor))
        with self._read() as conn:
            rows = list(conn.execute(query))
            more = len(rows) > size
            rows = rows[:size]
            names = [r.hostname for r in rows]
            seen: dict[str, list[str]] = {n: [] for n in names}
            if names:
                pairs = conn.execute(
                    select(host_agents.c.hostname, host_agents.c.agent_id)
                    .where(host_agents.c.hostname.in_(names))
                    .order_by(host_agents.c.hostname, host_agents.c.agent_id)
                )
                for name, agent in pairs:
                    seen[name].append(agent)
        page = [
            HostRecord(
                hostname=r.hostname,
                first_seen_us=r.first_seen,
                last_seen_us=r.last_seen,
                bundle_count=r.bundle_count,
                last_bundle_id=r.last_bundle_id,
                os=r.os,
                agent_ids=tuple(seen[r.hostname]),
            )
            for r in rows
        ]
        return page, (encode_host_cursor(names[-1]) if more else None)
