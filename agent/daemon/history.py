"""The customer's record of every live request: ``<home>/history.jsonl`` (0600).

One JSON object per line, appended and flushed before the agent acts, so a crash
never hides a request. Fields: ``at`` (UTC ISO time), ``request_id``,
``requested_by`` (the engineer's token label), ``reason``, ``scopes``, ``since_s``,
``outcome`` and ``detail``, ``bundle_id`` and ``sha256`` where there is a bundle, and
``spec`` (``name``, ``version``, ``signer``, ``sha256``) when the request named a signed
collection spec (null when the spec could not be read at all).

Outcomes: ``accepted`` (about to collect), ``done`` (uploaded), ``spooled`` (collector
unreachable; kept in the spool), ``delivered`` (a spooled bundle uploaded later),
``dropped`` (a spooled bundle removed at the spool's bound), ``denied`` (policy),
``duplicate`` (a request id seen before), ``expired``, ``failed``, ``refused`` (a request
the agent could not take as a request at all: its id is not an id — see
``agent.untrusted`` — recorded with ``request_id`` empty and the id, escaped and cut, in
``bad_request_id``), ``triggered`` (a trigger of the policy fired: ``trigger`` names it,
``detail`` says what it saw; its bundle's ``failed``/``done``/``spooled`` entries carry
the same ``trigger`` and an empty ``request_id``).

What the collector sent (who asked, the reason) is recorded cleaned of control and bidi
characters, and cleaned again by ``shown`` when displayed: a file written by an older
agent, or edited, must not drive the owner's terminal either.

The history is also the at-most-once ledger: a request id that appears in it is never
executed again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import Any

from agent.transport.live_states import LiveState
from agent.untrusted import clean_text

__all__ = ["OUTCOMES", "History", "shown"]

# The ends a request shares with the collector's view of it are its states' words
# (``agent.transport.live_states``); the rest are the ledger's own. ``delivered`` here is a
# spooled bundle uploaded later, not the request state of that name.
OUTCOMES: frozenset[str] = frozenset(
    {str(s) for s in (LiveState.DONE, LiveState.DENIED, LiveState.EXPIRED, LiveState.FAILED)}
    | {"accepted", "spooled", "delivered", "dropped", "duplicate", "refused", "triggered"}
)


def shown(value: object, limit: int = 200) -> str:
    """One field of an entry as it may be put on a terminal (see module doc)."""
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return clean_text("" if value is None else str(value), limit)


class History:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, outcome: str, **fields: Any) -> dict[str, Any]:
        if outcome not in OUTCOMES:
            raise ValueError(f"history outcome {outcome!r} unknown; expected one of {sorted(OUTCOMES)}")
        entry = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), "outcome": outcome, **fields}
        line = json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line after a power cut; the rest stands
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def seen(self, request_id: str) -> bool:
        return bool(request_id) and any(e.get("request_id") == request_id for e in self.entries())

    def accepted_since(self, since: dt.datetime) -> int:
        count = 0
        for e in self.entries():
            if e.get("outcome") != "accepted":
                continue
            try:
                at = dt.datetime.fromisoformat(str(e.get("at")))
            except ValueError:
                continue
            if at >= since:
                count += 1
        return count
