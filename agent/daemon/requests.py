"""An engineer's live request, from the collector's ``SnapshotRequest`` to the bundle sent.

Per request, in order: an id that is not an id (``agent.untrusted``) → ``refused``
(answered ``denied``; nothing is named after it); seen before → ``denied`` (duplicate;
at most once per id), past ``expires_at_unix`` → ``expired``, outside the policy →
``denied by policy: <rule>``; else recorded as accepted, collected (kind "live", with the
request id in the manifest) as ``collecting``, uploaded through Ingest as ``uploading``
(``agent.daemon.delivery``: spooled when the collector cannot take it). The collector
reports ``done`` once it has stored the bundle.

Every field is the collector's word, and a collector holding the pinned key may be
stolen: the id is checked before any use, the text is cleaned before it is recorded or
logged, and the work folder is named here, never after the request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.daemon.delivery import Delivery
from agent.daemon.history import History
from agent.daemon.live_spec import check_live_spec
from agent.daemon.policy import Policy, collectors_for
from agent.daemon.worker import CollectionWorker, new_work_dir
from agent.scopes import reads_logs
from agent.transport.live_states import LiveState
from agent.untrusted import REQUEST_ID_MAX, clean_text, describe_id, request_id_problem
from protos import collector_pb2

__all__ = ["Progress", "RequestHandler"]

log = logging.getLogger("casefile.agent.daemon")

_SCOPES_RECORDED = 8  # of a request's scopes, the history keeps this many (four built in, plus plugins)

# (request id, state, detail, bundle id): sent to the collector when a stream is open.
Progress = Callable[[str, LiveState, str, str], None]


class RequestHandler:
    def __init__(
        self,
        *,
        home: Path,
        agent_id: str,
        policy: Policy,
        history: History,
        delivery: Delivery,
        worker: CollectionWorker,
        busy: asyncio.Lock,
        progress: Progress,
    ) -> None:
        self.home = home
        self.agent_id = agent_id
        self.policy = policy
        self.history = history
        self.delivery = delivery
        self.worker = worker
        self.busy = busy
        self.progress = progress
        self.work = home / "work"

    async def _record(self, outcome: str, detail: str, who: dict[str, Any]) -> None:
        await asyncio.to_thread(lambda: self.history.append(outcome, detail=detail, **who))

    async def handle(self, req: collector_pb2.SnapshotRequest) -> None:
        scopes = tuple(req.scopes) or ("facts",)
        since = int(req.since_seconds)
        who = {
            "request_id": req.request_id,
            "requested_by": clean_text(req.requested_by, 200),
            "reason": clean_text(req.reason, 500),
            "scopes": [clean_text(s, 40) for s in scopes[:_SCOPES_RECORDED]],
            "since_s": since,
        }
        rid = req.request_id
        problem = request_id_problem(rid)
        if problem is not None:
            await self._refuse(req, problem, who)
            return
        async with self.busy:
            if await asyncio.to_thread(self.history.seen, rid):
                detail = f"duplicate request id {rid!r}: already handled once"
                await self._record("duplicate", detail, who)
                self.progress(rid, LiveState.DENIED, detail, "")
                return
            if req.expires_at_unix and dt.datetime.now(dt.UTC).timestamp() > req.expires_at_unix:
                detail = f"request expired at {_unix_time(req.expires_at_unix)}"
                await self._record("expired", detail, who)
                self.progress(rid, LiveState.EXPIRED, detail, "")
                return
            hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
            recent = await asyncio.to_thread(self.history.accepted_since, hour_ago)
            rule = self.policy.denial(scopes, since, recent)
            checked = None if rule else check_live_spec(scopes, req.spec_envelope, *self._spec_trust())
            if checked is not None:  # a spec: what it is goes in the history, allowed or not
                who["spec"] = checked.record
                rule = checked.denial
            if rule is not None:
                detail = f"denied by policy: {rule}"
                await self._record("denied", detail, who)
                self.progress(rid, LiveState.DENIED, detail, "")
                log.info("request %s from %s %s", rid, who["requested_by"], detail)
                return
            # No window named means the policy's largest, never the collector's default.
            window = self.policy.logs_window(since) if reads_logs(scopes) else None
            if window is not None:
                who["since_s"] = window
            await asyncio.to_thread(lambda: self.history.append("accepted", **who))
            self.progress(rid, LiveState.COLLECTING, f"scopes {', '.join(scopes)}", "")
            try:
                work = await asyncio.to_thread(new_work_dir, self.work, "live-")
            except OSError as exc:  # a full or read-only disk: answered like any failed collection
                detail = f"collection failed: no work folder under {self.work}: {exc}"
                await self._record("failed", detail, who)
                self.progress(rid, LiveState.FAILED, detail, "")
                return
            try:
                bundle = await self.worker.collect(
                    home=self.home,
                    agent_id=self.agent_id,
                    request_id=rid,
                    collectors=collectors_for(scopes),
                    since_s=window,
                    profile=self.policy.profile,
                    output_dir=work,
                    spec=(req.spec_envelope, self.policy.spec_signers) if checked is not None else None,
                )
            except asyncio.CancelledError:
                # The agent is stopping: the child was ended, nothing will be uploaded.
                self.history.append("failed", detail="interrupted: the agent stopped during the collection", **who)
                shutil.rmtree(work, ignore_errors=True)
                raise
            except Exception as exc:
                detail = f"collection failed: {exc}"
                log.exception("request %s: %s", rid, detail)
                await self._record("failed", detail, who)
                self.progress(rid, LiveState.FAILED, detail, "")
                shutil.rmtree(work, ignore_errors=True)
                return
        self.progress(rid, LiveState.UPLOADING, f"bundle {bundle.bundle_id}, {bundle.size:,} bytes", "")
        try:
            spooled = await self.delivery.send(
                bundle, self.worker, rid, {**who, "bundle_id": bundle.bundle_id, "sha256": bundle.sha256}
            )
            if spooled:
                self.progress(rid, LiveState.UPLOADING, spooled, bundle.bundle_id)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _spec_trust(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.policy.spec_signers, self.policy.live_specs

    async def _refuse(self, req: collector_pb2.SnapshotRequest, problem: str, who: dict[str, Any]) -> None:
        """A request whose id is no id: recorded and answered, never acted on."""
        entry = {**who, "request_id": "", "bad_request_id": describe_id(req.request_id)}
        detail = f"refused: {problem}"
        await self._record("refused", detail, entry)
        log.warning("refused a request from the collector: %s", problem)
        # Echoed (cut) so the collector can tell which request it was; it is not used here.
        self.progress(req.request_id[: 2 * REQUEST_ID_MAX], LiveState.DENIED, detail, "")


def _unix_time(seconds: int) -> str:
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()
    except (OverflowError, ValueError, OSError):  # out of datetime's range
        return f"unix time {seconds}"
