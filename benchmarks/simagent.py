"""Simulated agents, shared by the benchmarks that hold many: their keys, their enrollment,
their Channel handshake, and parking on the collector's doorbell.

hello → challenge → signed response → accepted, over a ``grpc.aio`` Channel stub. The
collector refuses handshakes beyond its bound with UNAVAILABLE ("collector busy"): the
simulated agent backs off with full jitter and tries again, as the daemon does.

Parking (:func:`park`) is the daemon's order with the daemon's own client
(``agent.daemon.doorbell.Doorbell.park``): the doorbell named in ``ChannelAccepted`` first,
then the stream half-closed and read until the collector ends it. Its caller closes the
gRPC connection once every stream on it has parked, as the daemon closes its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.daemon import channel_message
from agent.daemon.doorbell import Doorbell, DoorbellRefused
from agent.keys import SigningKey, fingerprint_of
from agent.transport.connect import CollectorAddress
from collector.storage import Store
from protos import collector_pb2

__all__ = ["enroll", "handshake", "open_doorbell", "park", "sim_key"]


def sim_key(label: bytes, i: int) -> SigningKey:
    """Agent ``i``'s key, derived from ``label`` and ``i``: worker processes derive the keys
    their parent enrolled without a key file."""
    return SigningKey(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label + b"-%d" % i).digest()))


def enroll(store: Store, count: int, label: bytes, hostname_prefix: str) -> list[tuple[int, str]]:
    """Enroll agents ``0..count-1`` with their :func:`sim_key`; ``(index, agent id)`` each."""
    agents = []
    for i in range(count):
        raw = sim_key(label, i).public.raw
        agents.append((i, store.create_agent(raw, fingerprint_of(raw), f"{hostname_prefix}-{i:05d}", None).id))
    return agents


async def handshake(stub: Any, agent_id: str, key: SigningKey, *, attempts: int = 30) -> tuple[Any, Any]:
    """``(call, answer)``: the open Connect call and the collector's answer to the response
    (``accepted`` when all went well, or ``grpc.aio.EOF``); raises after ``attempts`` refusals."""
    for attempt in range(attempts):
        call: Any = stub.Connect()
        try:
            await call.write(collector_pb2.AgentMessage(hello=collector_pb2.ChannelHello(agent_id=agent_id)))
            challenge = await call.read()
            sig = key.sign(channel_message(bytes(challenge.challenge.nonce), agent_id))
            await call.write(
                collector_pb2.AgentMessage(challenge_response=collector_pb2.ChallengeResponse(signature=sig))
            )
            return call, await call.read()
        except grpc.aio.AioRpcError:
            # The call's status, not the failed write's INTERNAL, is the collector's answer.
            if await call.code() is not grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:
                raise
            await asyncio.sleep(random.uniform(0, min(10.0, 0.5 * 2**attempt)))
    raise AssertionError("unreachable")


async def open_doorbell(
    address: CollectorAddress, port: int, pin: str, key: SigningKey, agent_id: str, *, attempts: int = 30
) -> tuple[Doorbell, int]:
    """``(doorbell, refusals)``: parked with the daemon's client. A refusal (the doorbell's
    bounds on handshakes close the connection) is retried with full jitter, as the daemon
    retries after its idle time."""
    for attempt in range(attempts):
        try:
            return await Doorbell.park(address, port, pin, key, agent_id, 30.0), attempt
        except DoorbellRefused:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(random.uniform(0, min(10.0, 0.5 * 2**attempt)))
    raise AssertionError("unreachable")


async def park(
    call: Any, accepted: Any, address: CollectorAddress, pin: str, key: SigningKey, agent_id: str, *, attempts: int = 30
) -> tuple[Doorbell, int]:
    """``(doorbell, refusals)``: parked on the doorbell ``accepted`` (the ``CollectorMessage``)
    offered, the Channel ``call`` then half-closed and read until the collector ended it. A
    refusal is retried (:func:`open_doorbell`)."""
    offer = accepted.accepted
    if not offer.doorbell_port or not offer.park_after_s:
        raise SystemExit(f"agent {agent_id}: the collector offered no doorbell ({offer})")
    bell, refusals = await open_doorbell(address, offer.doorbell_port, pin, key, agent_id, attempts=attempts)
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass  # the collector sends nothing to an idle agent; it ends the call once it reads the half-close
    return bell, refusals
