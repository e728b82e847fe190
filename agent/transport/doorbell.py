"""The doorbell's wire format: what a parked agent holds instead of its Channel stream.

An idle Channel stream costs the collector ~87 KiB (grpc-core's connection, TLS and
call); a parked agent's doorbell ~22 (``benchmarks/README.md``). After a TLS 1.3
handshake with the collector's certificate (pinned by the agent, as for the Channel),
both sides exchange frames of ``type (1 byte) | length (2 bytes, big-endian) | payload``:

====================  ========  ==========================================================
collector → agent     NONCE     32 random bytes for this connection only
agent → collector     PROOF     id length (1) | agent id (ASCII) | Ed25519 signature (64)
                                over ``channel_proof.doorbell_message(nonce, agent_id)``
collector → agent     PARKED    empty: the agent is parked here, online for engineers
                      REFUSED   why (UTF-8); the collector then closes the connection
collector → agent     RING      empty: a request is queued; open the Channel and take it
====================  ========  ==========================================================

The agent sends nothing after its proof and leaves by closing the connection (once its
Channel is accepted again). A payload longer than ``MAX_PAYLOAD``, an unknown type or a
frame out of order ends the connection. Free of imports beyond the standard library:
the collector parses it without the agent's daemon, the daemon without grpcio.
"""

from __future__ import annotations

import contextlib
import socket
import struct

__all__ = [
    "HEADER",
    "KEEPALIVE_IDLE_S",
    "KEEPALIVE_INTERVAL_S",
    "MAX_PAYLOAD",
    "NONCE",
    "PARKED",
    "PROOF",
    "REFUSED",
    "RING",
    "SIGNATURE_BYTES",
    "DoorbellError",
    "FrameReader",
    "frame",
    "keep_alive",
    "parse_proof",
    "proof",
]

HEADER = struct.Struct(">BH")
NONCE, PROOF, PARKED, REFUSED, RING = 1, 2, 3, 4, 5
KNOWN = frozenset((NONCE, PROOF, PARKED, REFUSED, RING))
MAX_PAYLOAD = 512
SIGNATURE_BYTES = 64
MAX_AGENT_ID = 64
# Both ends of a doorbell: TCP keepalive, the kernel's (nothing wakes the process), keeps NAT
# mappings open and finds a peer gone without a word in about 60 + 4 x 15 s.
KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 15
_ID_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class DoorbellError(ValueError):
    """Bytes that are not the doorbell protocol; the connection is closed."""


def keep_alive(sock: socket.socket | None) -> None:
    """TCP keepalive on a doorbell's socket (where the platform has the options)."""
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


def frame(kind: int, payload: bytes = b"") -> bytes:
    if kind not in KNOWN or len(payload) > MAX_PAYLOAD:
        raise DoorbellError(f"frame type {kind} with {len(payload)} bytes cannot be sent")
    return HEADER.pack(kind, len(payload)) + payload


class FrameReader:
    """Frames out of a byte stream fed in pieces; never holds more than one frame's bytes."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        at = 0
        while len(buf) - at >= HEADER.size:
            kind, n = HEADER.unpack_from(buf, at)
            if kind not in KNOWN:
                raise DoorbellError(f"unknown doorbell frame type {kind} at byte {at}")
            if n > MAX_PAYLOAD:
                raise DoorbellError(f"doorbell frame of {n} bytes (at most {MAX_PAYLOAD})")
            if len(buf) - at < HEADER.size + n:
                break
            out.append((kind, bytes(buf[at + HEADER.size : at + HEADER.size + n])))
            at += HEADER.size + n
        self._buf = bytes(buf[at:])
        return out


def proof(agent_id: str, signature: bytes) -> bytes:
    """The PROOF frame's payload."""
    raw = agent_id.encode("ascii")
    if not 0 < len(raw) <= MAX_AGENT_ID or len(signature) != SIGNATURE_BYTES:
        raise DoorbellError("an agent id of 1-64 characters and a 64-byte signature")
    return bytes([len(raw)]) + raw + signature


def parse_proof(payload: bytes) -> tuple[str, bytes]:
    """(agent id, signature) of a PROOF payload; DoorbellError saying what is wrong."""
    if not payload:
        raise DoorbellError("empty proof")
    n = payload[0]
    if not 0 < n <= MAX_AGENT_ID:
        raise DoorbellError(f"proof names an agent id of {n} bytes (1-{MAX_AGENT_ID})")
    if len(payload) != 1 + n + SIGNATURE_BYTES:
        raise DoorbellError(f"proof of {len(payload)} bytes; an id of {n} needs {1 + n + SIGNATURE_BYTES}")
    raw = payload[1 : 1 + n]
    if not set(raw) <= _ID_CHARS:
        raise DoorbellError("proof's agent id has characters outside [A-Za-z0-9_.-]")
    return raw.decode("ascii"), bytes(payload[1 + n :])
