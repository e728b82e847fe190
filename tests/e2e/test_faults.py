"""Faults under load: a collector killed mid-run, connections cut mid-upload, PostgreSQL restarted.

Everything is a real process or a real socket on 127.0.0.1: the collector runs as
``casefile-collector serve`` (TLS, pinned), uploads go through
``agent.transport.upload_bundle``, and every stored bundle is downloaded again through
Query and checked with ``verify_bundle``. Waits are bounded polls of real state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agent.bundle import WrittenBundle, verify_bundle
from agent.keys import SigningKey
from agent.transport import UploadTarget, enroll, open_channel, parse_address, upload_bundle
from collector.storage import BlobStore, Store
from protos import collector_pb2, collector_pb2_grpc
from tests.collector.conftest import small_bundle
from tests.e2e.test_live import BIN, free_port, wait_for


@dataclass
class Served:
    """``casefile-collector serve`` as a subprocess; restartable on the same port and data."""

    data: Path
    port: int
    log: Path
    db_url: str | None = None
    replica_id: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    fingerprint: str = ""

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.db_url or f"sqlite:///{self.data / 'casefile.db'}"

    def start(self) -> None:
        ready = self.data.parent / f"ready-{self.port}.json"
        ready.unlink(missing_ok=True)
        cmd = [str(BIN / "casefile-collector"), "serve", "--address", self.addr, "--data-dir", str(self.data),
               "--ready-file", str(ready)]
        if self.db_url:
            cmd += ["--db-url", self.db_url]
        if self.replica_id:
            cmd += ["--replica-id", self.replica_id]
        with self.log.open("a") as fh:
            proc = self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        wait_for("collector ready", lambda: ready.exists() or proc.poll() is not None, timeout=60,
                 logs=self.log.read_text)
        assert proc.poll() is None, self.log.read_text()
        self.fingerprint = json.loads(ready.read_text())["fingerprint"]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        self.proc = None

    def store(self) -> Store:
        return Store.open(self.url)

    def channel(self, addr: str | None = None) -> grpc.Channel:
        return open_channel(parse_address(addr or self.addr), ca_fingerprint=self.fingerprint)


def serving(tmp: Path, db_url: str | None = None) -> Iterator[Served]:
    c = Served(data=tmp / "data", port=free_port(), log=tmp / "collector.log", db_url=db_url)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@dataclass(frozen=True)
class Uploader:
    agent_id: str
    key: SigningKey
    engineer: str


def enrolled(c: Served) -> Uploader:
    with c.store() as store:
        tok, _ = store.create_token("enroll", label="faults", ttl=dt.timedelta(hours=1), max_uses=1)
        eng, _ = store.create_token("engineer", role="engineer", label="faults", ttl=dt.timedelta(hours=1))
    key = SigningKey.generate()
    with c.channel() as ch:
        resp = enroll(ch, token=tok, key=key, hostname="faults", agent_version="test")
    return Uploader(resp.agent_id, key, eng)


def make_bundles(tmp: Path, who: Uploader, n: int, payload: int) -> list[WrittenBundle]:
    rnd = random.Random(7)
    return [
        small_bundle(tmp / "bundles", who.key, agent_id=who.agent_id, payload=rnd.randbytes(payload))
        for _ in range(n)
    ]


def upload_until_stored(addr: str, fp: str, who: Uploader, b: WrittenBundle, deadline: float) -> str:
    """The daemon's loop in small: upload (it resumes), and on a dead collector reconnect."""
    target = UploadTarget(key=who.key, agent_id=who.agent_id)
    while True:
        try:
            with open_channel(parse_address(addr), ca_fingerprint=fp) as ch:
                receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=target, attempts=3)
                return receipt.sha256
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.05, 0.5))


def check_stored(c: Served, who: Uploader, bundles: list[WrittenBundle], tmp: Path) -> None:
    """Every bundle stored exactly once, its blob present, downloaded byte-identical and verifying."""
    blobs = BlobStore(c.data)
    with c.store() as store:
        rows, token = store.list_bundles(agent_id=who.agent_id, page_size=500)
        while token:
            more, token = store.list_bundles(agent_id=who.agent_id, page_size=500, cursor=token)
            rows += more
    ids = [r.bundle_id for r in rows]
    assert len(ids) == len(set(ids)) == len(bundles)
    assert set(ids) == {b.bundle_id for b in bundles}
    by_id = {r.bundle_id: r for r in rows}
    md = (("authorization", f"Bearer {who.engineer}"),)
    out = tmp / "downloaded"
    out.mkdir(exist_ok=True)
    with c.channel() as ch:
        stub = collector_pb2_grpc.QueryStub(ch)
        for b in bundles:
            assert by_id[b.bundle_id].sha256 == b.sha256
            assert blobs.blob_path(by_id[b.bundle_id].blob_key).exists()
            path = out / b.path.name
            with path.open("wb") as fh:
                for chunk in stub.DownloadBundle(collector_pb2.GetBundleRequest(bundle_id=b.bundle_id), metadata=md,
                                                 timeout=60):
                    fh.write(chunk.data)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == b.sha256
            verify_bundle(path, expected_key=who.key.public)
            path.unlink()


class RowsHaveBlobs(threading.Thread):
    """Samples the store while uploads run: a visible row always has its complete blob."""

    def __init__(self, c: Served) -> None:
        super().__init__(daemon=True)
        self.c = c
        self.stop = threading.Event()
        self.seen = 0
        self.problems: list[str] = []

    def run(self) -> None:
        blobs = BlobStore(self.c.data)
        with self.c.store() as store:
            while not self.stop.wait(0.05):
                rows, _ = store.list_bundles(page_size=1000)
                self.seen = max(self.seen, len(rows))
                for r in rows:
                    p = blobs.blob_path(r.blob_key)
                    if not p.exists() or p.stat().st_size != r.size:
                        self.problems.append(f"row {r.bundle_id} visible without its complete blob")


@pytest.mark.parametrize("n", [200, pytest.param(1000, marks=pytest.mark.slow)])
def test_sigkill_mid_run_every_bundle_stored_exactly_once(tmp_path: Path, n: int) -> None:
    gen = serving(tmp_path)
    c = next(gen)
    try:
        who = enrolled(c)
        bundles = make_bundles(tmp_path, who, n, payload=96 * 1024)
        sampler = RowsHaveBlobs(c)
        sampler.start()
        deadline = time.monotonic() + 300
        with cf.ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(upload_until_stored, c.addr, c.fingerprint, who, b, deadline) for b in bundles]
            # Counted on the client side: the sampler's pass over every row's blob can be
            # slower under load than the whole run, and then the kill would come too late.
            wait_for("a quarter stored", lambda: sum(f.done() for f in futures) >= n // 4,
                     timeout=240, logs=c.log.read_text)
            killed_with_work_left = sum(not f.done() for f in futures)
            c.stop(signal.SIGKILL)
            c.start()
            shas = [f.result(timeout=300) for f in futures]
        sampler.stop.set()
        sampler.join(30)
        assert killed_with_work_left > 0, "every upload finished before the kill; the test proved nothing"
        assert shas == [b.sha256 for b in bundles]
        assert not sampler.problems, sampler.problems[:5]
        check_stored(c, who, bundles, tmp_path)
    finally:
        gen.close()


# ---------------------------------------------------------------- connections cut mid-upload


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 that cuts each connection after a random number of bytes.

    It does not look inside: TLS passes through, the client pins the collector's
    certificate as usual. ``cuts`` counts connections it cut on purpose.
    """

    def __init__(self, upstream_port: int, lo: int, hi: int, seed: int = 11) -> None:
        self.upstream_port = upstream_port
        self.lo, self.hi = lo, hi
        self.rnd = random.Random(seed)
        self.cuts = 0
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, budget: list[int]) -> None:
        try:
            while True:
                data = await r.read(16384)
                if not data:
                    break
                if budget[0] is not None:
                    budget[0] -= len(data)
                    if budget[0] <= 0:
                        self.cuts += 1
                        break
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cw.close()
            return
        budget = [self.rnd.randint(self.lo, self.hi)]
        up = asyncio.ensure_future(self._pipe(cr, uw, budget))
        down = asyncio.ensure_future(self._pipe(ur, cw, [None]))  # type: ignore[list-item]
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for t in (up, down):
            t.cancel()
        for w in (cw, uw):
            w.transport.abort()  # an RST, like a dropped NAT mapping, not a polite close

    def start(self) -> str:
        self._thread.start()

        async def listen() -> int:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            return int(self._server.sockets[0].getsockname()[1])

        self.port = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# Slow: each connection is cut after 64 KiB-1 MiB, so 8 bundles of 2 MiB need dozens of
# reconnects each; on this 2-core machine that is 5-90 s, more under load.
@pytest.mark.slow
def test_cut_connections_every_upload_completes_by_resuming(tmp_path: Path) -> None:
    gen = serving(tmp_path)
    c = next(gen)
    proxy = CuttingProxy(c.port, lo=64 * 1024, hi=1024 * 1024)
    try:
        who = enrolled(c)
        bundles = make_bundles(tmp_path, who, 8, payload=2 * 1024 * 1024)
        addr = proxy.start()
        deadline = time.monotonic() + 240
        with cf.ThreadPoolExecutor(8) as pool:
            shas = list(pool.map(lambda b: upload_until_stored(addr, c.fingerprint, who, b, deadline), bundles))
        assert shas == [b.sha256 for b in bundles]
        assert proxy.cuts >= len(bundles), f"only {proxy.cuts} cuts: the uploads were not interrupted"
        check_stored(c, who, bundles, tmp_path)
    finally:
        proxy.close()
        gen.close()


# ---------------------------------------------------------------- PostgreSQL restarted


def _pg_cluster() -> list[str] | None:
    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir() if (p / "main").is_dir())
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"] if versions else None


@pytest.fixture
def restartable_postgres_url() -> Iterator[str]:
    """Like conftest's ``postgres_url``, but its admin engine pings before reuse: the
    database is dropped after PostgreSQL was restarted under it."""
    from sqlalchemy import create_engine, text

    restart = _pg_cluster()
    if restart is None:
        pytest.skip("needs root and a local pg_ctlcluster 'main' cluster to restart PostgreSQL")
    from tests.conftest import _admin_url, _postgres_problem

    admin = _admin_url()
    problem = _postgres_problem(admin)
    if problem is not None:
        if os.environ.get("CASEFILE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL not reachable: {problem}")
        pytest.skip(f"PostgreSQL not reachable: {problem}; set CASEFILE_TEST_POSTGRES_URL")
    engine = create_engine(admin, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"casefile_restart_{random.randrange(16**12):012x}"
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin.set(database=name).render_as_string(hide_password=False)
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_restart_under_load_collector_recovers(tmp_path: Path, restartable_postgres_url: str) -> None:
    postgres_url = restartable_postgres_url
    restart = _pg_cluster()
    assert restart is not None
    gen = serving(tmp_path, db_url=postgres_url)
    c = next(gen)
    try:
        who = enrolled(c)
        bundles = make_bundles(tmp_path, who, 60, payload=64 * 1024)
        deadline = time.monotonic() + 240
        with cf.ThreadPoolExecutor(30) as pool:
            futures = [pool.submit(upload_until_stored, c.addr, c.fingerprint, who, b, deadline) for b in bundles]
            wait_for("some stored", lambda: sum(f.done() for f in futures) >= 5, timeout=120, logs=c.log.read_text)
            subprocess.run(restart, check=True, timeout=120, capture_output=True)
            shas = [f.result(timeout=240) for f in futures]
        assert shas == [b.sha256 for b in bundles]
        assert c.proc is not None and c.proc.poll() is None, "the collector must survive on its own"
        later = make_bundles(tmp_path / "later", who, 3, payload=1024)
        for b in later:
            assert upload_until_stored(c.addr, c.fingerprint, who, b, time.monotonic() + 60) == b.sha256
        check_stored(c, who, bundles + later, tmp_path)
    finally:
        gen.close()
