"""What keeps a reconnect storm short: handshakes in flight bounded, connects committed in groups.

Real collector on loopback (SQLite and, where available, PostgreSQL), real agents' keys and
handshakes; the group commit against a real store.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.daemon import channel_message
from agent.keys import SigningKey, fingerprint_of
from agent.transport import enroll
from agent.transport.connect import PINNED_TARGET_NAME, fetch_certificate, parse_address
from collector.services.channel import HANDSHAKE_TIMEOUT_S
from collector.services.channel_log import ChannelLog
from collector.storage import Store
from protos import collector_pb2, collector_pb2_grpc
from tests.collector.conftest import RunningCollector


def _enroll(collector: RunningCollector, hostname: str) -> tuple[str, SigningKey]:
    key = SigningKey.generate()
    with collector.channel() as ch:
        resp = enroll(ch, token=collector.enroll_token(), key=key, hostname=hostname, agent_version="t")
    return resp.agent_id, key


async def _hello(ch: grpc.aio.Channel, agent_id: str) -> tuple[Any, Any]:
    call: Any = collector_pb2_grpc.ChannelStub(ch).Connect()
    await call.write(collector_pb2.AgentMessage(hello=collector_pb2.ChannelHello(agent_id=agent_id)))
    return call, await call.read()


async def _finish(call: Any, challenge: Any, agent_id: str, key: SigningKey) -> Any:
    sig = key.sign(channel_message(bytes(challenge.challenge.nonce), agent_id))
    await call.write(collector_pb2.AgentMessage(challenge_response=collector_pb2.ChallengeResponse(signature=sig)))
    return await call.read()


def test_handshakes_beyond_the_bound_are_refused_at_once_and_not_audited(collector: RunningCollector) -> None:
    service = collector.server._channel
    assert service is not None
    service.max_handshakes = 1
    first_id, first_key = _enroll(collector, "storm-a")
    second_id, second_key = _enroll(collector, "storm-b")
    creds = grpc.ssl_channel_credentials(root_certificates=fetch_certificate(parse_address(collector.address)))
    opts = [("grpc.ssl_target_name_override", PINNED_TARGET_NAME), ("grpc.use_local_subchannel_pool", 1)]

    async def run() -> None:
        async with (
            grpc.aio.secure_channel(collector.address, creds, options=opts) as ch1,
            grpc.aio.secure_channel(collector.address, creds, options=opts) as ch2,
        ):
            # The first agent is mid-handshake (challenged, not yet answered): the one slot.
            call1, challenge1 = await _hello(ch1, first_id)
            assert challenge1.WhichOneof("msg") == "challenge"
            await ch2.channel_ready()  # the TLS connection is not what is timed
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _hello(ch2, second_id)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "busy" in (info.value.details() or "")
            # Refused at once, not after the first stream's handshake timed out (a loaded
            # test machine can still take seconds to run anything).
            assert loop.time() - t0 < HANDSHAKE_TIMEOUT_S
            accepted1 = await _finish(call1, challenge1, first_id, first_key)
            assert accepted1.accepted.agent_id == first_id
            # The slot is free once the first stream is accepted, though that stream stays open.
            call2, challenge2 = await _hello(ch2, second_id)
            accepted2 = await _finish(call2, challenge2, second_id, second_key)
            assert accepted2.accepted.agent_id == second_id
            assert service.handshaking == 0
            call1.cancel()
            call2.cancel()

    asyncio.run(run())
    assert service.busy_refusals == 1
    rows = [r for r in collector.store.list_audit(100) if r.action.startswith("channel.")]
    # One row per accepted stream and none for the refusal; each agent seen.
    assert sorted((r.actor, r.outcome) for r in rows) == sorted([(first_id, "ok"), (second_id, "ok")])
    for agent_id in (first_id, second_id):
        assert collector.store.get_agent(agent_id).last_seen_at_us is not None


def test_a_refused_handshake_frees_its_slot(sqlite_collector: RunningCollector) -> None:
    service = sqlite_collector.server._channel
    assert service is not None
    service.max_handshakes = 1
    agent_id, key = _enroll(sqlite_collector, "storm-c")
    creds = grpc.ssl_channel_credentials(root_certificates=fetch_certificate(parse_address(sqlite_collector.address)))
    opts = [("grpc.ssl_target_name_override", PINNED_TARGET_NAME), ("grpc.use_local_subchannel_pool", 1)]

    async def run() -> None:
        async with grpc.aio.secure_channel(sqlite_collector.address, creds, options=opts) as ch:
            call, challenge = await _hello(ch, agent_id)
            stranger = SigningKey.generate()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _finish(call, challenge, agent_id, stranger)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            call, challenge = await _hello(ch, agent_id)
            assert (await _finish(call, challenge, agent_id, key)).accepted.agent_id == agent_id
            call.cancel()

    asyncio.run(run())
    assert service.handshaking == 0
    assert service.busy_refusals == 0


def test_connects_arriving_together_are_committed_together(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    ids = []
    for i in range(40):
        raw = SigningKey.generate().public.raw
        ids.append(store.create_agent(raw, fingerprint_of(raw), f"h{i}", None).id)
    pool = ThreadPoolExecutor(max_workers=2)
    log = ChannelLog(store, pool)

    def entry(agent_id: str) -> dict[str, Any]:
        return {"actor": agent_id, "role": "agent", "action": "channel.connect", "target": agent_id,
                "peer": "ipv4:127.0.0.1:1", "outcome": "ok", "detail": "test"}

    async def run() -> None:
        await asyncio.gather(*(log.record(seen=a, audit=entry(a)) for a in ids))
        # An agent removed meanwhile is skipped, not an error; a write alone works too.
        await log.record(seen="ag_gone")
        await log.record(audit=entry("ag_gone"))

    try:
        asyncio.run(run())
        rows = store.list_audit(100, action="channel.connect")
        assert sorted(r.actor for r in rows) == sorted([*ids, "ag_gone"])
        assert all(store.get_agent(a).last_seen_at_us is not None for a in ids)
        # 40 connects at once: far fewer transactions than writes (the first goes alone,
        # the rest queue behind it), each caller returning only after its own commit.
        assert 2 <= log.batches <= 10
    finally:
        pool.shutdown()
        store.close()


def test_a_failed_commit_reaches_every_caller_of_its_batch(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    pool = ThreadPoolExecutor(max_workers=1)
    log = ChannelLog(store, pool)
    bad = {"actor": "x", "action": "channel.connect", "outcome": "no-such-outcome"}

    async def run() -> list[BaseException | None]:
        results = await asyncio.gather(*(log.record(audit=bad) for _ in range(3)), return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]

    try:
        assert all(r is not None and "outcome" in str(r) for r in asyncio.run(run()))
        assert store.list_audit(10, action="channel.connect") == []
    finally:
        pool.shutdown()
        store.close()
