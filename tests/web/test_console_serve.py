"""Starting the console: a port in use is refused in words; sessions live in the shared
database, end when they expire and work on every replica."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import subprocess
import time
from pathlib import Path
from unittest.mock import patch

from sqlalchemy import select

from collector.server import ServerConfig
from collector.storage import Store
from collector.storage.sessions_schema import console_sessions
from collector.web import sessions as sessions_module
from collector.web.sessions import ANON_TTL_S, SESSION_TTL_S, SessionTable
from tests.collector.conftest import _run_server
from tests.e2e.test_live import BIN, free_port
from tests.web.conftest import Http


def test_console_port_in_use_refuses_the_start_with_the_reason(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        grpc_port = free_port()
        res = subprocess.run(
            [str(BIN / "casefile-collector"), "serve", "--address", f"127.0.0.1:{grpc_port}",
             "--web-address", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
        )
    assert res.returncode == 2, res.stdout + res.stderr
    said = " ".join((res.stdout + res.stderr).split())
    assert f"cannot listen on 127.0.0.1:{port} (console): port {port} is already in use" in said
    assert "--web-address" in said
    with socket.create_server(("127.0.0.1", grpc_port)):  # the gRPC port was released
        pass


def test_sessions_expire_and_sign_in_replaces_the_id(store: Store) -> None:
    now = [1_000_000.0]
    table = SessionTable(store, clock=lambda: now[0])

    async def run() -> None:
        pre_id, pre = await table.anonymous()
        assert pre.expires_at == now[0] + ANON_TTL_S and not pre.signed_in
        sid, session = await table.sign_in(pre_id, token="cfu_x", token_id="tk_1", label="a", role="viewer",
                                           token_expires_at=now[0] + 60)
        assert sid != pre_id and await table.get(pre_id) is None
        assert session.expires_at == now[0] + 60  # the token's own expiry comes first
        sid2, long = await table.sign_in(None, token="cfu_y", token_id="tk_2", label="b", role="admin",
                                         token_expires_at=None)
        assert long.expires_at == now[0] + SESSION_TTL_S and long.csrf != session.csrf
        now[0] += 61
        assert await table.get(sid) is None and await table.get(sid2) is not None
        assert await table.end_for_token("tk_2") == 1 and await table.get(sid2) is None
        # Expired rows go at the next sweep (a sign-in form's pre-session makes one).
        assert store.count_sessions() == 1
        await table.anonymous()
        assert store.count_sessions() == 1

    asyncio.run(run())


def test_a_session_works_on_every_replica_and_its_row_holds_no_usable_secret(store_url: str) -> None:
    """Two replicas (two stores, one database): a session made on one is the same session
    on the other, signing out on one ends it on both. The row has only the id's hash and
    the token sealed under a key from the id: neither the id nor the token is in it."""
    with Store.open(store_url) as one, Store.open(store_url) as two:
        a, b = SessionTable(one), SessionTable(two)

        async def run() -> None:
            token = "cfu_" + "k" * 43
            sid, made = await a.sign_in(None, token=token, token_id="tk_9", label="eng", role="engineer",
                                        token_expires_at=None)
            seen = await b.get(sid)
            assert seen is not None and seen.token == token and seen.csrf == made.csrf and seen.role == "engineer"
            with two.engine.connect() as conn:
                rows = [tuple(r) for r in conn.execute(select(console_sessions))]
            dump = repr(rows)
            assert len(rows) == 1 and sid not in dump and token not in dump and "k" * 43 not in dump
            # The id's hash is the key; presenting the hash as a cookie is not the session.
            assert await b.get(made.key) is None
            await b.delete(sid)
            assert await a.get(sid) is None

        asyncio.run(run())


def test_pre_sessions_are_bounded(store: Store) -> None:
    table = SessionTable(store)

    async def run() -> None:
        for _ in range(5):
            await table.anonymous()

    with patch.object(sessions_module, "MAX_ANONYMOUS", 3):
        asyncio.run(run())
    assert store.count_sessions() == 3


def test_console_connections_send_without_waiting_for_acks(tmp_path: Path) -> None:
    """The listening socket says it is TCP, so asyncio sets TCP_NODELAY on every connection:
    a response's headers and body (two TLS records) no longer wait out the client's delayed
    ACK (~40 ms a page, measured with ``benchmarks/bench_console.py``)."""
    config = ServerConfig(address="127.0.0.1:0", data_dir=tmp_path / "c", web_address="127.0.0.1:0")
    for running in _run_server(config):
        console = running.server.console
        assert console is not None and console._server is not None
        sockets = [s for server in console._server.servers for s in server.sockets]
        assert sockets and all(s.proto == socket.IPPROTO_TCP for s in sockets)
        web = Http(running.server.web_port, running.data_dir / "tls" / "collector.crt")
        conn = http.client.HTTPSConnection("127.0.0.1", web.port, context=web.ctx, timeout=30)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            conn.request("GET", "/static/favicon.svg")
            assert conn.getresponse().read()
            times.append(time.perf_counter() - t0)
        conn.close()
        assert sorted(times)[3] < 0.035, times  # the stall was >= 40 ms on every request
