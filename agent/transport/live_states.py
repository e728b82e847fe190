"""The one vocabulary of a live snapshot request's states, shared by agent and collector.

A request's life (``collector.storage.live`` stores it, ``collector.live`` drives it)::

    queued → delivered → collecting → uploading → done
                       ↘ denied / failed / expired          (the agent's word, or time)
    queued ↘ offline                                       (the agent was away, no --wait)

``timeout`` is never stored: it is what an engineer's ``RequestSnapshot`` call ends with
when its own wait runs out while the request is still running (a slow upload); the
request itself may still reach ``done`` later.

On the wire a state travels twice, by a compatibility plan (``protos/collector.proto``,
``enum LiveState``): as the proto enum in ``live_state`` (``SnapshotProgress``,
``SnapshotEvent``, ``HuntHost``), and as this vocabulary's word in the deprecated
``state`` string beside it, which earlier releases read. A string field cannot simply
become an enum: its wire type would change (length-delimited → varint), and an agent or
collector of an earlier release would drop or misread it. So senders fill both
(:func:`to_wire` gives the enum value for the word); receivers call :func:`state_of`,
which reads ``live_state`` and falls back to the string when that is ``UNSPECIFIED``
(an earlier peer) or a value this release does not know (a later one). What is stored,
printed and written as ``--json`` stays the word (:func:`in_words` before the CLI prints).
This module is the one place the words and the enum values meet; once no supported
release reads the strings, they can go.

The agent's own history file (``agent.daemon.history``) has a separate vocabulary of
*outcomes* (accepted, spooled, …) for the customer's ledger; its ``denied``, ``expired``,
``failed`` and ``done`` are these states' words for the same ends.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias, cast

from protos import collector_pb2

__all__ = [
    "AGENT_STATES",
    "CALL_ENDS",
    "FINAL_STATES",
    "STORED_STATES",
    "Carrier",
    "LiveState",
    "in_words",
    "state_of",
    "to_wire",
]


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


# The words and the proto enum values: the one place they meet (see the module docstring).
_WIRE: dict[LiveState, collector_pb2.LiveState] = {
    s: cast("collector_pb2.LiveState", collector_pb2.LiveState.Value(f"LIVE_STATE_{s.name}")) for s in LiveState
}
_FROM_WIRE: dict[int, LiveState] = {v: s for s, v in _WIRE.items()}

# The messages that carry a state twice (``state`` and ``live_state``).
Carrier: TypeAlias = collector_pb2.SnapshotProgress | collector_pb2.SnapshotEvent | collector_pb2.HuntHost


def to_wire(state: str) -> collector_pb2.LiveState:
    """The ``live_state`` value for a state's word; ``UNSPECIFIED`` for a word this
    vocabulary does not have (the receiver then reads the string sent beside it)."""
    try:
        return _WIRE[LiveState(state)]
    except ValueError:
        return collector_pb2.LIVE_STATE_UNSPECIFIED


def state_of(message: Carrier) -> str:
    """A received message's state: ``live_state`` when set and known, else the string.

    A ``LiveState`` member when either names one; otherwise the peer's word as it came
    (a state of a later release, shown as is rather than dropped).
    """
    known = _FROM_WIRE.get(message.live_state)
    if known is not None:
        return known
    try:
        return LiveState(message.state)
    except ValueError:
        return message.state


def in_words(message: Carrier) -> None:
    """Turn a received message into what an earlier release received: ``state`` set to
    :func:`state_of`, ``live_state`` cleared. What the command line prints and writes as
    ``--json`` is then the same, field for field, whichever release sent it."""
    state = state_of(message)
    message.ClearField("live_state")
    message.state = state
