"""Getting a bundle the daemon sealed to the collector: upload, else spool, and the record.

Shared by the answers to engineers' requests (``agent.daemon.service``) and triggered
captures (``agent.daemon.capture``). An upload runs in a collection child
(``agent.daemon.worker``) and is tried ``UPLOAD_ATTEMPTS`` times; a bundle that cannot
be uploaded goes to the spool (``agent.daemon.spool``), delivered oldest first after the
next accepted connection. Every outcome is written to the customer's history: ``done``,
``spooled``, ``delivered``, ``dropped`` (pushed out at the spool's bound).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.daemon.history import History
from agent.daemon.spool import Spool
from agent.daemon.worker import CollectionWorker, LiveBundle
from agent.errors import CasefileError
from agent.state import Enrollment

__all__ = ["UPLOAD_ATTEMPTS", "Delivery"]

log = logging.getLogger("casefile.agent.daemon")

UPLOAD_ATTEMPTS = 3  # then spool: the spool retries on every reconnect, for ever


class Delivery:
    def __init__(
        self,
        *,
        home: Path,
        enrollment: Enrollment,
        history: History,
        spool: Spool,
        spool_worker: CollectionWorker,
        stopping: Callable[[], bool],
    ) -> None:
        self.home = home
        self.enrollment = enrollment
        self.history = history
        self.spool = spool
        self.spool_worker = spool_worker
        self.stopping = stopping
        self.lock = asyncio.Lock()  # one writer of the spool at a time

    async def upload(self, path: Path, bundle_id: str, worker: CollectionWorker) -> None:
        await worker.upload(
            home=self.home,
            agent_id=self.enrollment.agent_id,
            collector=self.enrollment.collector,
            ca_fingerprint=self.enrollment.ca_fingerprint,
            path=path,
            bundle_id=bundle_id,
            attempts=UPLOAD_ATTEMPTS,
        )

    async def send(self, bundle: LiveBundle, worker: CollectionWorker, request_id: str, ids: dict[str, Any]) -> str:
        """Upload ``bundle``, or spool it; the history says which. Returns "" when uploaded,
        else why it was spooled."""
        try:
            await self.upload(bundle.path, bundle.bundle_id, worker)
        except asyncio.CancelledError:
            # The agent is stopping mid-upload: keep the bundle for the next start.
            self.keep(bundle, request_id, ids, "the agent stopped during the upload; delivered on restart")
            raise
        except CasefileError as exc:
            detail = f"collector unreachable ({exc}); spooled for delivery on reconnect"
            async with self.lock:
                await asyncio.to_thread(self.keep, bundle, request_id, ids, detail)
            log.warning("bundle %s: %s", bundle.bundle_id, detail)
            return detail
        await asyncio.to_thread(lambda: self.history.append("done", **ids))
        return ""

    def keep(self, bundle: LiveBundle, request_id: str, ids: dict[str, Any], detail: str) -> None:
        """Keep an undelivered bundle in the spool; record it, and what the spool's bound pushed out."""
        _, dropped = self.spool.add(
            bundle.path, bundle_id=bundle.bundle_id, request_id=request_id, sha256=bundle.sha256
        )
        self.history.append("spooled", detail=detail, **ids)
        bound = f"spool bound reached ({self.spool.max_bundles} bundles, {self.spool.max_bytes} bytes)"
        for old in dropped:
            self.history.append(
                "dropped",
                detail=f"{bound}: oldest bundle dropped",
                request_id=old.request_id,
                bundle_id=old.bundle_id,
                sha256=old.sha256,
            )

    def _delivered(self, ids: dict[str, str]) -> None:
        self.history.append("delivered", detail="", **ids)

    async def deliver_spool(self) -> None:
        async with self.lock:
            for item in await asyncio.to_thread(self.spool.pending):
                if self.stopping():
                    return
                try:
                    await self.upload(item.path, item.bundle_id, self.spool_worker)
                except CasefileError as exc:
                    log.warning("spooled bundle %s not delivered yet: %s", item.bundle_id, exc)
                    return
                await asyncio.to_thread(self.spool.remove, item)
                ids = {"request_id": item.request_id, "bundle_id": item.bundle_id, "sha256": item.sha256}
                await asyncio.to_thread(self._delivered, ids)
                log.info("spooled bundle %s delivered", item.bundle_id)
