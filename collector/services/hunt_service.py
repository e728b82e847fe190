"""Hunt: create a fleet request, read its per-host status, compare its bundles.

Engineer role for all three (a hunt sends requests to customers' machines, and its
results read their facts). Each call is audited once by ``EngineerAuth.audited``;
creating one also writes a ``hunt.request`` row per host (see ``collector.hunts``).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import grpc

from agent.transport.live_states import LiveState, state_of
from collector.auth import EngineerAuth
from collector.edge import unary
from collector.hunt_compare import compare, metrics_of
from collector.hunts import create_hunt, hunt_status
from collector.live import LiveRouter
from collector.services.fleet import stored_analysis
from collector.storage import BlobStore, Store
from collector.storage.errors import InvalidArgument
from collector.storage.text import clip
from protos import collector_pb2, collector_pb2_grpc, facts_pb2

__all__ = ["HuntService"]

_HUNT_ID_RE = re.compile(r"hu_[0-9a-f]{24}")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and newline allowed

audited = EngineerAuth.audited


def _hunt_id(value: str) -> str:
    if not _HUNT_ID_RE.fullmatch(value):
        raise InvalidArgument(f"hunt_id {clip(value, 40)!r} is not a hunt id (hu_ and 24 hex digits)")
    return value


def _reason(value: str) -> str:
    if len(value) > 2000:
        raise InvalidArgument(f"reason is {len(value)} characters long; at most 2000 are allowed")
    if _CONTROL_RE.search(value):
        raise InvalidArgument(f"reason {clip(value, 40)!r} holds a control character")
    return value


class HuntService(collector_pb2_grpc.HuntServicer):
    def __init__(self, store: Store, blobs: BlobStore, router: LiveRouter) -> None:
        self._store = store
        self._blobs = blobs
        self._auth = EngineerAuth(store)
        self._router = router

    @unary
    @audited("hunt.create", lambda r: r.case_id[:200])
    async def CreateHunt(
        self, request: collector_pb2.HuntSpec, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.HuntStatus:
        _reason(request.reason)
        token = await self._auth.require(context, role="engineer")
        hunt = await create_hunt(self._store, self._router, token, request, context.peer() or "")
        return await hunt_status(self._store, self._router, hunt.hunt_id)

    @unary
    @audited("hunt.status", lambda r: r.hunt_id[:40])
    async def GetHuntStatus(
        self, request: collector_pb2.HuntRef, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.HuntStatus:
        _hunt_id(request.hunt_id)
        await self._auth.require(context, role="engineer")
        return await hunt_status(self._store, self._router, request.hunt_id)

    @unary
    @audited("hunt.status", lambda r: r.hunt_id[:40], refusals_only=True)
    async def PollHuntStatus(
        self, request: collector_pb2.HuntRef, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.HuntStatus:
        """GetHuntStatus for a page that polls a hunt it shows (the console): the same
        checks and role; audited only when refused, since showing the hunt was audited
        (``hunt.results``). Not an RPC of the Hunt service."""
        _hunt_id(request.hunt_id)
        await self._auth.require(context, role="engineer")
        return await hunt_status(self._store, self._router, request.hunt_id)

    @unary
    @audited("hunt.results", lambda r: r.hunt_id[:40])
    async def GetHuntResults(
        self, request: collector_pb2.HuntRef, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.HuntResults:
        _hunt_id(request.hunt_id)
        await self._auth.require(context, role="engineer")
        status = await hunt_status(self._store, self._router, request.hunt_id)
        done = [h for h in status.hosts if state_of(h) == LiveState.DONE and h.bundle_id]
        names = [h.hostname for h in status.hosts]
        figures: dict[str, dict[str, float]] = {}
        findings: dict[str, list[tuple[str, str, str]]] = {}
        bundles = []
        ids = [h.bundle_id for h in done]
        stored = await asyncio.to_thread(self._store.stored_findings_of, ids)
        missing = [bundle_id for bundle_id in ids if bundle_id not in stored]
        if missing:  # analysed at ingest; one the worker has not reached yet is analysed once, now
            for bundle_id in missing:
                await stored_analysis(self._store, self._blobs, bundle_id)
            stored.update(await asyncio.to_thread(self._store.stored_findings_of, missing))
        for host in done:
            # Two agents may report one host name: then each is named with its agent id.
            name = host.hostname if names.count(host.hostname) == 1 else f"{host.hostname} ({host.agent_id})"
            figures[name] = await asyncio.to_thread(self._figures, host.bundle_id)
            findings[name] = stored.get(host.bundle_id, [])
            bundles.append({"host": name, "agent_id": host.agent_id, "bundle_id": host.bundle_id})
        doc = {"hunt_id": status.hunt_id, "bundles": bundles, **compare(figures, findings)}
        return collector_pb2.HuntResults(status=status, json=json.dumps(doc, ensure_ascii=False))

    def _figures(self, bundle_id: str) -> dict[str, float]:
        """One stored bundle's compared figures, from the facts stored at ingest (no blob read)."""
        facts_pb, _ = self._store.get_bundle_content(bundle_id)
        return metrics_of(facts_pb2.Snapshot.FromString(facts_pb))
