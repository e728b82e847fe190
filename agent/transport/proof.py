"""Proof of key possession for an upload, shared by the agent and the collector.

An upload is bound to one bundle and one moment: the agent signs the bundle id, its
hash and size, and the current time. The collector checks it against the enrolled key
before accepting a single byte, so nobody without the key can fill its staging disk,
and a captured proof is only good for the same bundle for a few minutes.

A proof's text fields come from the caller: :func:`check_proof_text` is what the
collector accepts in them (the host name names a case-token identity and is printed to
engineers later; the agent id is looked up and echoed in refusals).
"""

from __future__ import annotations

import socket
import time

from agent.identity_text import check_identity_text, identity_problem
from agent.keys import SigningKey
from protos import collector_pb2

__all__ = ["MAX_AGENT_ID_CHARS", "PROOF_WINDOW_S", "check_proof_text", "make_proof", "proof_message"]

PROOF_WINDOW_S = 300
MAX_AGENT_ID_CHARS = 64


def proof_message(bundle_id: str, sha256: str, size: int, timestamp_unix: int) -> bytes:
    return f"casefile-ingest-v1\n{bundle_id}\n{sha256}\n{size}\n{timestamp_unix}".encode()


def make_proof(key: SigningKey, *, agent_id: str, bundle_id: str, sha256: str, size: int) -> collector_pb2.AgentProof:
    ts = int(time.time())
    return collector_pb2.AgentProof(
        agent_id=agent_id,
        public_key=key.public.raw,
        timestamp_unix=ts,
        signature=key.sign(proof_message(bundle_id, sha256, size, ts)),
        hostname=_proof_hostname(),
    )


def _proof_hostname() -> str:
    # The host name is informational; one the collector would refuse is left out (the
    # collector then names the identity after its case) rather than failing the upload.
    name = socket.gethostname()
    return name if identity_problem(name) is None else ""


def check_proof_text(proof: collector_pb2.AgentProof) -> None:
    """ValueError naming the field if the proof's agent id or host name is not plain
    printable text of bounded length (empty is allowed for both: they are optional)."""
    if proof.agent_id:
        check_identity_text("proof agent_id", proof.agent_id, max_chars=MAX_AGENT_ID_CHARS)
    if proof.hostname:
        check_identity_text("proof hostname", proof.hostname)
