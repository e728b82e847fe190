"""Triggered capture: a trigger fired (``agent.daemon.trigger_watch``); seal and send a bundle.

The recorder's thread hands each firing to the service's loop (``Capture.fired``,
thread-safe). Then, like an engineer's request but without one: recorded in the history
(``triggered``, with the trigger's name and what it saw), collected in the collection
child with the trigger's scopes and ``history_s`` of recorded history, as a bundle of
kind ``triggered`` whose manifest names the trigger (``spec.options.trigger``) and whose
facts say what fired it (``Snapshot.trigger``: name, kind, what it saw, when), then
uploaded or spooled (``agent.daemon.delivery``). One collection at a time: a trigger
waits behind an engineer's snapshot, never beside it. A capture that finds the agent
stopping is given up; its firing stays in the history.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from agent.daemon.delivery import Delivery
from agent.daemon.history import History
from agent.daemon.policy import Policy, collectors_for
from agent.daemon.trigger_watch import Firing, TriggerWatch
from agent.daemon.worker import CollectionWorker, new_work_dir
from agent.scopes import reads_logs

__all__ = ["Capture", "past_firings"]

log = logging.getLogger("casefile.agent.daemon")


def past_firings(history: History) -> list[tuple[str, float]]:
    """(trigger, unix time) of the firings the history holds: the rate limits outlive a restart."""
    import datetime as dt

    out: list[tuple[str, float]] = []
    for e in history.entries():
        if e.get("outcome") != "triggered":
            continue
        try:
            at = dt.datetime.fromisoformat(str(e.get("at"))).timestamp()
        except ValueError:
            continue
        out.append((str(e.get("trigger", "")), at))
    return out


class Capture:
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
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.home = home
        self.agent_id = agent_id
        self.policy = policy
        self.history = history
        self.delivery = delivery
        self.worker = worker
        self.busy = busy
        self.spawn = spawn
        self.work = home / "work"
        self.loop = asyncio.get_running_loop()

    def watch(self) -> TriggerWatch:
        """The watch the recorder's thread runs; built in this loop's thread from the history."""
        return TriggerWatch(self.policy.triggers, self.policy.triggers_max_per_hour, past=past_firings(self.history))

    def fired(self, firing: Firing) -> None:
        """From the recorder's thread: record the firing and start its capture in the loop."""
        log.info("trigger %s fired: %s", firing.trigger.name, firing.detail)
        self.history.append("triggered", trigger=firing.trigger.name, detail=firing.detail)
        self.loop.call_soon_threadsafe(self.spawn, self.capture(firing))

    async def capture(self, firing: Firing) -> None:
        t = firing.trigger
        window = self.policy.logs_window(0) if reads_logs(t.scopes) else None
        ids: dict[str, Any] = {"request_id": "", "trigger": t.name, "scopes": list(t.scopes)}
        async with self.busy:
            try:
                work = await asyncio.to_thread(new_work_dir, self.work, "triggered-")
            except OSError as exc:
                detail = f"collection failed: no work folder under {self.work}: {exc}"
                await asyncio.to_thread(lambda: self.history.append("failed", detail=detail, **ids))
                return
            try:
                bundle = await self.worker.collect(
                    home=self.home,
                    agent_id=self.agent_id,
                    request_id="",
                    collectors=collectors_for(t.scopes),
                    since_s=window,
                    profile=self.policy.profile,
                    output_dir=work,
                    trigger=t.name,
                    history_s=t.history_s,
                    trigger_facts={"when": t.when, "detail": firing.detail, "at": firing.at},
                )
            except asyncio.CancelledError:
                self.history.append("failed", detail="interrupted: the agent stopped during the collection", **ids)
                shutil.rmtree(work, ignore_errors=True)
                raise
            except Exception as exc:
                detail = f"collection failed: {exc}"
                log.exception("trigger %s: %s", t.name, detail)
                await asyncio.to_thread(lambda: self.history.append("failed", detail=detail, **ids))
                shutil.rmtree(work, ignore_errors=True)
                return
        try:
            ids.update(bundle_id=bundle.bundle_id, sha256=bundle.sha256)
            await self.delivery.send(bundle, self.worker, "", ids)
        finally:
            shutil.rmtree(work, ignore_errors=True)
