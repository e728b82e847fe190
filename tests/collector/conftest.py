"""A real collector on loopback (TLS, real store) for service and end-to-end tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agent.bundle import BundleMeta, BundleWriter, WrittenBundle, new_bundle_id
from agent.keys import SigningKey
from agent.transport import open_channel, parse_address
from collector.server import CollectorServer, ServerConfig
from collector.storage import Store
from protos import facts_pb2


@dataclass
class RunningCollector:
    server: CollectorServer
    address: str
    fingerprint: str
    data_dir: Path
    store: Store

    def channel(self) -> grpc.Channel:
        return open_channel(parse_address(self.address), ca_fingerprint=self.fingerprint)

    def engineer_token(self, role: str = "engineer") -> str:
        token, _ = self.store.create_token("engineer", role=role, label=f"test {role}", ttl=dt.timedelta(hours=1))
        return token

    def expired_token(self, kind: str, **kw: object) -> str:
        """A token issued two days ago for one day: expired now, through the real store."""
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        with Store.open(str(self.store.engine.url.render_as_string(hide_password=False)), clock=lambda: past) as s:
            token, _ = s.create_token(kind, ttl=dt.timedelta(days=1), **kw)  # type: ignore[arg-type]
        return token

    def enroll_token(self, uses: int = 1) -> str:
        token, _ = self.store.create_token("enroll", label="test", ttl=dt.timedelta(hours=1), max_uses=uses)
        return token


def _run_server(config: ServerConfig) -> Iterator[RunningCollector]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, object] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            server = CollectorServer(config)
            holder["server"] = server
            loop.run_until_complete(server.start())
        except BaseException as exc:  # surfaced to the test thread below
            holder["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="collector", daemon=True)
    thread.start()
    started.wait(30)
    if "error" in holder:
        raise holder["error"]  # type: ignore[misc]
    server = holder["server"]
    assert isinstance(server, CollectorServer)
    running = RunningCollector(
        server=server,
        address=f"127.0.0.1:{server.port}",
        fingerprint=server.tls.fingerprint if server.tls else "",
        data_dir=config.data_dir,
        store=server.store,
    )
    try:
        yield running
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0.5), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@pytest.fixture
def collector(tmp_path: Path, store_url: str) -> Iterator[RunningCollector]:
    """A TLS collector on 127.0.0.1 over SQLite and (where available) PostgreSQL."""
    yield from _run_server(ServerConfig(address="127.0.0.1:0", data_dir=tmp_path / "collector", db_url=store_url))


@pytest.fixture
def sqlite_collector(tmp_path: Path) -> Iterator[RunningCollector]:
    yield from _run_server(ServerConfig(address="127.0.0.1:0", data_dir=tmp_path / "collector"))


def small_bundle(
    out: Path,
    key: SigningKey,
    *,
    agent_id: str = "",
    case_id: str | None = None,
    hostname: str = "web-1",
    payload: bytes = b"",
    bundle_id: str | None = None,
) -> WrittenBundle:
    """A real signed bundle with a real Snapshot, cheap enough to make per test."""
    bid = bundle_id or new_bundle_id()
    snap = facts_pb2.Snapshot(bundle_id=bid, agent_id=agent_id, case_id=case_id or "", kind="one-shot")
    snap.host.hostname = hostname
    snap.host.os = "Linux"
    snap.memory.total = 8 * 1024**3
    meta = BundleMeta(
        bundle_id=bid,
        hostname=hostname,
        case_id=case_id,
        kind="one-shot",
        agent_id=agent_id,
        agent_version="test",
        created_at=dt.datetime.now(dt.UTC),
        request_id=None,
    )
    out.mkdir(parents=True, exist_ok=True)
    with BundleWriter(out, key=key, meta=meta) as w:
        w.add_bytes("facts.pb", snap.SerializeToString())
        if payload:
            w.add_bytes("logs/payload.bin", payload)
        return w.finish(spec={"test": True}, collectors=[], truncated=[], redaction=None)
