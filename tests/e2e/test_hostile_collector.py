"""A collector that holds the pinned key and turns against the agent.

The key of a collector can be stolen, or its host taken over. The agent trusts it to
*ask* for snapshots, never to name files on the customer's machine or to write on its
owner's terminal. Here a small ``grpc.aio`` server with the real collector's TLS
certificate and key (so the agent's pin matches) serves the Channel service to a real
``casefile agent run`` process and sends crafted SnapshotRequests: ids that are paths
(``..``, absolute, out of the work folder), overlong, with NUL and escape sequences, and
text full of terminal escapes and bidi overrides. Before, the agent used the id as a
folder name and removed that folder after the request: ``..`` deleted its own home (key,
enrollment, policy, history, spool), an absolute path a folder elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from agent.daemon import AgentService, DaemonOptions
from agent.state import AgentHome, Enrollment
from agent.transport import enroll, open_channel, parse_address
from collector.server import ServerConfig
from collector.tls import TlsMaterial, ensure_self_signed
from protos import collector_pb2, collector_pb2_grpc
from tests.collector.conftest import _run_server
from tests.e2e.test_live import BIN

TERMINAL_TRICKS = "\x1b[31mroot\x1b[0m\x1b]0;owned\x07\u202egpj.exe\u202c\u2066x\u2069\x9b2J"


class HostileChannel(collector_pb2_grpc.ChannelServicer):
    """Accepts the agent without checking it (a thief needs no check) and sends ``requests``
    down its first stream; keeps every SnapshotProgress the agent answers."""

    def __init__(self, requests: list[collector_pb2.SnapshotRequest], nonce_bytes: int = 32) -> None:
        self.requests = requests
        self.nonce_bytes = nonce_bytes
        self.answers: list[collector_pb2.SnapshotProgress] = []
        self.signed: list[bytes] = []  # the challenge responses received
        self.streams = 0

    async def Connect(
        self, request_iterator: AsyncIterator[collector_pb2.AgentMessage], context: Any
    ) -> AsyncIterator[collector_pb2.CollectorMessage]:
        self.streams += 1
        first = self.streams == 1
        it = aiter(request_iterator)
        hello = await anext(it)
        nonce = secrets.token_bytes(self.nonce_bytes)
        yield collector_pb2.CollectorMessage(challenge=collector_pb2.Challenge(nonce=nonce))
        self.signed.append(bytes((await anext(it)).challenge_response.signature))  # not even checked
        yield collector_pb2.CollectorMessage(accepted=collector_pb2.ChannelAccepted(agent_id=hello.hello.agent_id))

        async def read() -> None:
            async for msg in it:
                if msg.WhichOneof("msg") == "progress":
                    self.answers.append(msg.progress)

        reader = asyncio.create_task(read())
        try:
            if first:
                for req in self.requests:
                    yield collector_pb2.CollectorMessage(snapshot_request=req)
            await asyncio.Event().wait()  # hold the stream open
        finally:
            reader.cancel()


@contextlib.asynccontextmanager
async def _hostile_server(tls: TlsMaterial, servicer: HostileChannel) -> AsyncIterator[int]:
    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            ("grpc.http2.max_ping_strikes", 0),
        ]
    )
    collector_pb2_grpc.add_ChannelServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)]))
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


def _history_text(home: Path, *args: str) -> str:
    res = subprocess.run(
        [str(BIN / "casefile"), "agent", "history", "--home", str(home), *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "400"}, check=True,
    )  # fmt: skip
    return res.stdout


def test_a_collector_with_the_pinned_key_cannot_delete_or_name_files_nor_drive_the_terminal(tmp_path: Path) -> None:
    # A real collector makes the TLS certificate and key the agent pins, and enrolls it.
    gen = _run_server(ServerConfig(address="127.0.0.1:0", data_dir=tmp_path / "collector"))
    collector = next(gen)
    try:
        tls = collector.server.tls
        assert tls is not None
        home = AgentHome(tmp_path / "agent" / "home")
        key = home.key()
        with open_channel(parse_address(collector.address), ca_fingerprint=collector.fingerprint) as ch:
            token = collector.enroll_token()
            agent_id = enroll(ch, token=token, key=key, hostname="victim", agent_version="t").agent_id
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)  # the real collector stops; its key now serves the hostile one
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "precious.txt").write_text("do not delete")
    (home.root / "spool").mkdir(mode=0o700)

    bad_ids = [
        "..",
        ".",
        "../..",
        str(canary),  # absolute: rmtree(home/work / "/tmp/…/canary") is rmtree of the canary
        "../../../canary",  # out of <home>/work, <home> and agent/ into the canary
        "x" * 5000,
        "ab\x00cd",
        "\x1b[2J\x1b]0;owned\x07",
        "",
    ]
    facts = ["facts"]
    requests = [collector_pb2.SnapshotRequest(request_id=r, scopes=facts, requested_by="thief") for r in bad_ids]
    shown_id = secrets.token_hex(16)  # a good id with hostile text, for a scope the policy denies
    requests.append(
        collector_pb2.SnapshotRequest(
            request_id=shown_id, scopes=["fragmentation"], requested_by=TERMINAL_TRICKS, reason="a\nb" + TERMINAL_TRICKS
        )
    )
    # Numbers out of any sensible range: answered, not a crashed handler and silence.
    ancient, backwards = secrets.token_hex(16), secrets.token_hex(16)
    requests.append(collector_pb2.SnapshotRequest(request_id=ancient, scopes=facts, expires_at_unix=-(2**62)))
    requests.append(collector_pb2.SnapshotRequest(request_id=backwards, scopes=facts, since_seconds=-(2**63)))
    good_id = secrets.token_hex(16)  # and one the agent takes: collected in a folder it names
    requests.append(collector_pb2.SnapshotRequest(request_id=good_id, scopes=facts, requested_by="thief"))
    servicer = HostileChannel(requests)
    log = tmp_path / "agent.log"

    async def main() -> subprocess.Popen[bytes]:
        async with _hostile_server(tls, servicer) as port:
            home.save_enrollment(Enrollment(agent_id, f"127.0.0.1:{port}", tls.fingerprint, key.fingerprint))
            before = sorted(p.name for p in home.root.iterdir())
            assert {"agent.key", "enrollment.json", "spool"} <= set(before), before
            env = {**os.environ, "CASEFILE_AGENT_BACKOFF_MAX": "0.5", "CASEFILE_AGENT_BACKOFF_BASE": "0.1"}
            with log.open("a") as fh:
                proc = subprocess.Popen(
                    [str(BIN / "casefile"), "agent", "run", "--home", str(home.root)], stdout=fh, stderr=fh, env=env
                )
            try:
                deadline = asyncio.get_running_loop().time() + 90
                history = home.root / "history.jsonl"
                while asyncio.get_running_loop().time() < deadline:
                    text = history.read_text() if history.exists() else ""
                    if good_id in text and ('"spooled"' in text or '"failed"' in text):
                        break
                    if proc.poll() is not None:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"the agent did not get through the requests in 90 s\n{log.read_text()}")
                assert proc.poll() is None, f"the agent died\n{log.read_text()}"
                for name in before:  # the home is whole
                    assert (home.root / name).exists(), f"{name} is gone from the agent's home\n{log.read_text()}"
                return proc
            except BaseException:
                proc.kill()
                proc.wait(30)
                raise

    proc = asyncio.run(main())
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)

    assert (canary / "precious.txt").read_text() == "do not delete"
    assert home.key().fingerprint == key.fingerprint and home.enrollment() is not None
    assert (home.root / "policy.json").exists()

    entries = [json.loads(x) for x in (home.root / "history.jsonl").read_text().splitlines()]
    refused = [e for e in entries if e["outcome"] == "refused"]
    assert len(refused) == len(bad_ids), entries
    for e in refused:
        assert e["request_id"] == "" and e["detail"].startswith("refused: request id"), e
        assert e["bad_request_id"].isascii() and e["bad_request_id"].isprintable() and len(e["bad_request_id"]) < 120
    # Each refusal was answered, denied with the reason, under the id as sent (cut).
    answered = {a.request_id: a for a in servicer.answers}
    for bad in bad_ids:
        answer = answered[bad[:128]]
        assert answer.state == "denied" and answer.detail.startswith("refused: request id"), answer

    (denied,) = [e for e in entries if e["request_id"] == shown_id]
    assert denied["outcome"] == "denied" and "scope 'fragmentation' is not allowed" in denied["detail"]
    assert denied["requested_by"] == "[31mroot[0m]0;ownedgpj.exex2J"
    assert denied["reason"] == "a b[31mroot[0m]0;ownedgpj.exex2J"

    by_id = {e["request_id"]: e for e in entries}
    assert by_id[ancient]["outcome"] == "expired"
    assert by_id[ancient]["detail"] == f"request expired at unix time {-(2**62)}"
    assert by_id[backwards]["outcome"] == "denied" and "logs window" in by_id[backwards]["detail"]
    assert answered[ancient].state == "expired" and answered[backwards].state == "denied"

    # The good request was collected in a folder the agent named, now gone, and spooled
    # (the hostile collector serves no Ingest).
    outcomes = [e["outcome"] for e in entries if e["request_id"] == good_id]
    assert outcomes == ["accepted", "spooled"], entries
    assert list((home.root / "work").iterdir()) == []

    table = _history_text(home.root)
    as_json = _history_text(home.root, "--json")
    for out in (table, as_json):
        assert not any(c in out for c in "\x00\x1b\x07\x9b\u202e\u202c\u2066\u2069"), out
    assert "gpj.exe" in table and "thief" in table and shown_id in as_json


def test_the_agent_signs_only_a_challenge_of_the_protocols_size(tmp_path: Path) -> None:
    """The agent's key signs ``context + nonce + agent id``; a peer that picks a nonce of
    any length picks most of what the key signs. A challenge that is not 32 bytes ends
    the stream unsigned, and the agent dials again."""
    tls = ensure_self_signed(tmp_path / "tls")
    servicer = HostileChannel([], nonce_bytes=4096)

    async def main() -> None:
        async with _hostile_server(tls, servicer) as port:
            home = AgentHome(tmp_path / "home")
            home.save_enrollment(Enrollment("ag_x", f"127.0.0.1:{port}", tls.fingerprint, home.key().fingerprint))
            options = DaemonOptions(backoff_base_s=0.05, backoff_cap_s=0.2, worker_linger_s=0)
            service = AgentService(home, options)
            running = asyncio.create_task(service.run())
            try:
                deadline = asyncio.get_running_loop().time() + 20
                while servicer.streams < 3 and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.05)
            finally:
                service.stop()
                await asyncio.wait_for(running, 10)

    asyncio.run(main())
    assert servicer.streams >= 3, "the agent did not dial again"
    assert servicer.signed == [], "the agent signed a challenge of 4096 bytes"
