"""Proof of key possession for an upload, shared by the agent and the collector.

An upload is bound to one bundle and one moment: the agent signs the bundle id, its
hash and size, and the current time. The collector checks it against the enrolled key
before accepting a single byte, so nobody without the key can fill its staging disk,
and a captured proof is only good for the same bundle for a few minutes.
"""

from __future__ import annotations

import socket
import time

from agent.keys import SigningKey
from protos import collector_pb2

__all__ = ["PROOF_WINDOW_S", "make_proof", "proof_message"]

PROOF_WINDOW_S = 300


def proof_message(bundle_id: str, sha256: str, size: int, timestamp_unix: int) -> bytes:
    return f"casefile-ingest-v1\n{bundle_id}\n{sha256}\n{size}\n{timestamp_unix}".encode()


def make_proof(key: SigningKey, *, agent_id: str, bundle_id: str, sha256: str, size: int) -> collector_pb2.AgentProof:
    ts = int(time.time())
    return collector_pb2.AgentProof(
        agent_id=agent_id,
        public_key=key.public.raw,
        timestamp_unix=ts,
        signature=key.sign(proof_message(bundle_id, sha256, size, ts)),
        hostname=socket.gethostname()[:255],
    )
