"""The engineer's command line against collectors of three releases.

A live request's state travels as the ``LiveState`` enum (``live_state``) beside the
deprecated word in ``state`` (``agent.transport.live_states``). Here a small gRPC server
with a real self-signed certificate answers ``RequestSnapshot`` and ``GetHuntStatus`` as
a collector of an earlier release would (the word only), as this one does (both) and as
a later one might (the enum only); the real ``casefile-collector snapshot`` and ``hunt
status`` commands, plain and ``--json``, print exactly the same for all three.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.transport.live_states import to_wire
from collector.timestamps import timestamp_us
from collector.tls import ensure_self_signed
from protos import collector_pb2, collector_pb2_grpc
from tests.e2e.test_live import BIN

MODES = ("word only (earlier release)", "both (this release)", "enum only (a later release)")
EVENTS = [("queued", "waiting"), ("delivered", "sent"), ("collecting", "scopes facts"), ("uploading", "bundle"),
          ("failed", "disk full")]  # fmt: skip
AT_US = 1_796_600_000_000_000  # 2026-12-06T23:33:20Z


def _stamp(message: Any, word: str, mode: str) -> Any:
    if not mode.startswith("enum"):
        message.state = word
    if not mode.startswith("word"):
        message.live_state = to_wire(word)
    return message


class _Query(collector_pb2_grpc.QueryServicer):
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def RequestSnapshot(self, request: Any, context: Any) -> Iterator[collector_pb2.SnapshotEvent]:
        for i, (word, detail) in enumerate(EVENTS):
            event = collector_pb2.SnapshotEvent(
                request_id="lr_0123456789abcdef", detail=detail, agent_id="ag_1", at=timestamp_us(AT_US + i * 1_000_000)
            )
            yield _stamp(event, word, self.mode)


class _Hunt(collector_pb2_grpc.HuntServicer):
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def GetHuntStatus(self, request: Any, context: Any) -> collector_pb2.HuntStatus:
        hosts = []
        for w in ("done", "offline", "denied"):
            host = collector_pb2.HuntHost(
                agent_id=f"ag_{w}", hostname=f"web-{w}", request_id=f"lr_{w}", detail=f"{w}!",
                updated_at=timestamp_us(AT_US),
            )  # fmt: skip
            hosts.append(_stamp(host, w, self.mode))
        return collector_pb2.HuntStatus(
            hunt_id=request.hunt_id, case_id="SR-1", created_by="alice", created_at=timestamp_us(AT_US),
            expires_at=timestamp_us(AT_US + 86_400_000_000), scopes=["facts"], selector="role=web",
            hosts=hosts, counts={"done": 1, "offline": 1, "denied": 1},
        )  # fmt: skip


@contextlib.contextmanager
def _collector(tmp_path: Path, mode: str) -> Iterator[tuple[str, str]]:
    tls = ensure_self_signed(tmp_path / "tls")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    collector_pb2_grpc.add_QueryServicer_to_server(_Query(mode), server)
    collector_pb2_grpc.add_HuntServicer_to_server(_Hunt(mode), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)]))
    server.start()
    try:
        yield f"127.0.0.1:{port}", tls.fingerprint
    finally:
        server.stop(0).wait(10)


def _run(address: str, fingerprint: str, *args: str) -> tuple[int, str]:
    conn = ["--collector", address, "--token", "tok_test", "--ca-fingerprint", fingerprint]
    res = subprocess.run(
        [str(BIN / "casefile-collector"), *args, *conn],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "160", "TZ": "UTC"},
    )  # fmt: skip
    return res.returncode, res.stdout + res.stderr


COMMANDS = {
    "snapshot": ("snapshot", "web-1", "--timeout", "5"),
    "snapshot --json": ("snapshot", "web-1", "--timeout", "5", "--json"),
    "hunt status": ("hunt", "status", "hu_0123456789abcdef"),
    "hunt status --json": ("hunt", "status", "hu_0123456789abcdef", "--json"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_command_line_prints_the_same_for_collectors_of_three_releases(command: str, tmp_path: Path) -> None:
    outputs = {}
    for i, mode in enumerate(MODES):
        with _collector(tmp_path / str(i), mode) as (address, fingerprint):
            code, text = _run(address, fingerprint, *COMMANDS[command])
        outputs[mode] = (code, text.replace(address, "ADDRESS"))
    earlier = outputs[MODES[0]]
    assert "live_state" not in earlier[1] and "LIVE_STATE" not in earlier[1]
    if command.startswith("snapshot"):
        assert earlier[0] == 3 and "ended failed: disk full" in earlier[1], earlier  # the last state read
        assert all(word in earlier[1] for word, _ in EVENTS), earlier
    else:
        assert earlier[0] == 0 and all(w in earlier[1] for w in ("web-done", "offline", "denied!")), earlier
    for mode in MODES[1:]:
        if command.endswith("--json"):
            # Parsed: ``counts`` is a protobuf map, whose key order varies from process to
            # process whatever the release (the rest keeps its order, checked as text).
            assert outputs[mode][0] == earlier[0] and _doc(outputs[mode][1]) == _doc(earlier[1]), mode
            assert _without_counts(outputs[mode][1]) == _without_counts(earlier[1]), mode
        else:
            assert outputs[mode] == earlier, mode


def _doc(text: str) -> Any:
    return json.loads(text[: text.rindex("}") + 1])


def _without_counts(text: str) -> str:
    return re.sub(r'"counts": \{[^}]*\}', '"counts": {}', text)
