"""The one vocabulary of a live snapshot request's states, shared by agent and collector.

A request's life (``collector.storage.live`` stores it, ``collector.live`` drives it)::

    queued → delivered → collecting → uploading → done
                       ↘ denied / failed / expired          (the agent's word, or time)
    queued ↘ offline                                       (the agent was away, no --wait)

``timeout`` is never stored: it is what an engineer's ``RequestSnapshot`` call ends with
when its own wait runs out while the request is still running (a slow upload); the
request itself may still reach ``done`` later.

The wire keeps these as strings (``SnapshotProgress.state``, ``SnapshotEvent.state`` in
``protos/collector.proto``), not a protobuf enum: turning a ``string`` field into an
enum changes its wire type (length-delimited → varint), so an agent or collector of an
earlier release would drop or misread the field. A ``StrEnum`` member *is* its string,
so it goes into a message as is and compares equal to what arrives.

The agent's own history file (``agent.daemon.history``) has a separate vocabulary of
*outcomes* (accepted, spooled, …) for the customer's ledger; its ``denied``, ``expired``,
``failed`` and ``done`` are these states' words for the same ends.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["AGENT_STATES", "CALL_ENDS", "FINAL_STATES", "STORED_STATES", "LiveState"]


class LiveState(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    COLLECTING = "collecting"
    UPLOADING = "uploading"
    DONE = "done"
    DENIED = "denied"
    FAILED = "failed"
    EXPIRED = "expired"
    OFFLINE = "offline"
    TIMEOUT = "timeout"


# What the ``live_requests.state`` column may hold (in this order for messages).
STORED_STATES: tuple[LiveState, ...] = tuple(s for s in LiveState if s is not LiveState.TIMEOUT)
# A request in one of these never changes again: a late progress cannot resurrect it.
FINAL_STATES: frozenset[LiveState] = frozenset(
    {LiveState.DONE, LiveState.DENIED, LiveState.FAILED, LiveState.EXPIRED, LiveState.OFFLINE}
)
# What an agent may report in ``SnapshotProgress``. Not ``done``: only the collector's
# ingest of a bundle naming the request says that, never the agent's word.
AGENT_STATES: frozenset[LiveState] = frozenset(
    {LiveState.COLLECTING, LiveState.UPLOADING, LiveState.DENIED, LiveState.FAILED, LiveState.EXPIRED}
)
# The events after which an engineer's RequestSnapshot call ends.
CALL_ENDS: frozenset[LiveState] = FINAL_STATES | {LiveState.TIMEOUT}
