"""Starting the console: a port in use is refused in words; sessions end when they expire."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from collector.web.sessions import ANON_TTL_S, SESSION_TTL_S, SessionTable
from tests.e2e.test_live import BIN, free_port


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


def test_sessions_expire_and_sign_in_replaces_the_id() -> None:
    now = [1_000_000.0]
    table = SessionTable(clock=lambda: now[0])
    pre_id, pre = table.anonymous()
    assert pre.expires_at == now[0] + ANON_TTL_S and not pre.signed_in
    sid, session = table.sign_in(pre_id, token="cfu_x", token_id="tk_1", label="a", role="viewer",
                                 token_expires_at=now[0] + 60)
    assert sid != pre_id and table.get(pre_id) is None
    assert session.expires_at == now[0] + 60  # the token's own expiry comes first
    sid2, long = table.sign_in(None, token="cfu_y", token_id="tk_2", label="b", role="admin", token_expires_at=None)
    assert long.expires_at == now[0] + SESSION_TTL_S and long.csrf != session.csrf
    now[0] += 61
    assert table.get(sid) is None and table.get(sid2) is not None
    assert table.end_for_token("tk_2") == 1 and table.get(sid2) is None
