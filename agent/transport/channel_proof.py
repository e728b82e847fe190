"""What the agent signs to open a Channel, shared with the collector that checks it.

``signature = Ed25519(agent key, b"casefile-channel-v1\\n" + nonce + b"\\n" + agent_id)``

The nonce is 32 random bytes the collector chose for this one stream, so a signature
recorded on one stream is worthless on the next; the agent id is inside what is signed,
so a signature cannot be presented for another identity even if two agents ever shared
a key. The collector verifies with the key stored for that agent id at enrollment.

Beside ``proof`` (the upload's proof) and free of imports, so the collector checks it
without loading the agent's daemon (and its ``h2``), and the daemon signs it without
loading grpcio.
"""

from __future__ import annotations

__all__ = ["CHANNEL_CONTEXT", "DOORBELL_CONTEXT", "NONCE_BYTES", "channel_message", "doorbell_message"]

CHANNEL_CONTEXT = b"casefile-channel-v1\n"
# A parked agent's doorbell (agent.transport.doorbell) proves the same key over its own
# label: a signature made for one cannot be presented on the other.
DOORBELL_CONTEXT = b"casefile-doorbell-v1\n"
NONCE_BYTES = 32


def channel_message(nonce: bytes, agent_id: str) -> bytes:
    return CHANNEL_CONTEXT + nonce + b"\n" + agent_id.encode("utf-8")


def doorbell_message(nonce: bytes, agent_id: str) -> bytes:
    return DOORBELL_CONTEXT + nonce + b"\n" + agent_id.encode("utf-8")
