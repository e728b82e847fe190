"""The agent as a service (``casefile agent run``): the live Channel, policy, history, spool.

Kept free of typer and rich, so the resident process stays small; the CLI imports this
package only for the ``agent run`` and ``agent history`` commands. The service itself also
never imports the collection machinery: collections and uploads run in a child process
(``worker``, ``execute``). Nor grpcio: its one long-lived stream speaks gRPC through h2
(``h2stream``).
"""

from __future__ import annotations

from agent.daemon.history import History
from agent.daemon.main import run
from agent.daemon.policy import DEFAULT_POLICY, SCOPE_COLLECTORS, SCOPES, Policy, PolicyError, load_policy
from agent.daemon.service import AgentService, DaemonOptions
from agent.daemon.spool import Spool, SpooledBundle
from agent.transport.channel_proof import channel_message

__all__ = [
    "DEFAULT_POLICY",
    "SCOPES",
    "SCOPE_COLLECTORS",
    "AgentService",
    "DaemonOptions",
    "History",
    "Policy",
    "PolicyError",
    "Spool",
    "SpooledBundle",
    "channel_message",
    "load_policy",
    "run",
]
