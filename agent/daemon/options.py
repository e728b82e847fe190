"""The agent service's own settings: reconnect backoff, the collection child's linger, keepalive."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DaemonOptions"]

# The collector's ping policy: more often than every 20 s and it ends the connection.
_MIN_KEEPALIVE_S = 20.0


@dataclass(frozen=True)
class DaemonOptions:
    """Backoff in seconds; tests shorten it via $CASEFILE_AGENT_BACKOFF_MAX/_BASE.

    ``worker_linger_s`` ($CASEFILE_AGENT_WORKER_LINGER): how long the collection child
    stays after a snapshot for the next one; 0 ends it after each.

    Keepalive ($CASEFILE_AGENT_KEEPALIVE_S, $CASEFILE_AGENT_KEEPALIVE_TIMEOUT_S): a ping
    every 30 s keeps NAT mappings open, and one unanswered for 10 s means the collector
    or the path to it is gone: the stream is dropped and dialled again. The collector
    permits a ping every 20 s or slower (more often, it ends the connection), so the
    environment cannot ask for less than 20 s.
    """

    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    worker_linger_s: float = 60.0
    keepalive_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    # Park on the collector's doorbell when it offers one ($CASEFILE_AGENT_PARK=0: never).
    park: bool = True

    @classmethod
    def from_env(cls) -> DaemonOptions:
        base = float(os.environ.get("CASEFILE_AGENT_BACKOFF_BASE", "1.0"))
        cap = float(os.environ.get("CASEFILE_AGENT_BACKOFF_MAX", "60.0"))
        linger = float(os.environ.get("CASEFILE_AGENT_WORKER_LINGER", "60.0"))
        keepalive = float(os.environ.get("CASEFILE_AGENT_KEEPALIVE_S", "30.0"))
        keepalive_timeout = float(os.environ.get("CASEFILE_AGENT_KEEPALIVE_TIMEOUT_S", "10.0"))
        return cls(
            backoff_base_s=max(0.01, base),
            backoff_cap_s=max(0.01, cap),
            worker_linger_s=max(0.0, linger),
            keepalive_s=max(_MIN_KEEPALIVE_S, keepalive),
            keepalive_timeout_s=max(1.0, keepalive_timeout),
            park=os.environ.get("CASEFILE_AGENT_PARK", "1") != "0",
        )
