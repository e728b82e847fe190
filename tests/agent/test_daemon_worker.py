"""The daemon's collection child: real child processes, real bundles, real signatures.

And what the child is for: the resident daemon never imports the collection machinery,
typer or rich, so it stays small at rest and after every snapshot.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.bundle import verify_bundle
from agent.daemon.worker import CollectionWorker, LiveBundle
from agent.errors import CollectionError, UploadError
from agent.keys import SigningKey
from agent.state import AgentHome

# Never in the resident daemon, not even after it served a snapshot: the collection
# machinery and its dependencies, the CLI's libraries, grpcio (its Channel stream speaks
# gRPC through h2; uploads, which use grpcio, run in the collection child).
DAEMON_NEVER_IMPORTS = (
    "grpc",
    "typer",
    "rich",
    "click",
    "zstandard",
    "psutil",
    "agent.collect",
    "agent.oneshot",
    "agent.bundle",
    "agent.redact",
    "agent.analysis",
    "agent.transport.client",
    "agent.daemon.execute",
    "cryptography.x509",
)


def _home(tmp_path: Path) -> tuple[Path, SigningKey]:
    home = AgentHome(tmp_path / "home")
    return home.root, home.key()


async def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _collect(worker: CollectionWorker, home: Path, request_id: str, out: Path) -> Awaitable[LiveBundle]:
    return worker.collect(
        home=home,
        agent_id="ag_test",
        request_id=request_id,
        collectors=("host",),
        since_s=None,
        profile="standard",
        output_dir=out,
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_collections_run_in_one_child_that_lingers_then_exits(tmp_path: Path) -> None:
    home, key = _home(tmp_path)

    async def main() -> tuple[LiveBundle, LiveBundle, int]:
        worker = CollectionWorker(linger_s=0.5)
        first = await _collect(worker, home, "req-1", tmp_path / "w1")
        pid = worker.pid
        assert pid is not None and pid != os.getpid()
        second = await _collect(worker, home, "req-2", tmp_path / "w2")
        assert worker.pid == pid  # the follow-up request did not pay for a new child
        await _until(lambda: worker.pid is None, "the idle child to be retired")
        await worker.close()
        return first, second, pid

    first, second, pid = asyncio.run(main())
    assert _gone(pid)
    for bundle, request_id in ((first, "req-1"), (second, "req-2")):
        verified = verify_bundle(bundle.path, expected_key=key.public)
        assert verified.manifest.kind == "live" and verified.manifest.request_id == request_id
        assert verified.bundle_id == bundle.bundle_id and bundle.path.stat().st_size == bundle.size
        assert hashlib.sha256(bundle.path.read_bytes()).hexdigest() == bundle.sha256


def test_a_failed_collection_is_answered_and_the_child_stays(tmp_path: Path) -> None:
    home, _ = _home(tmp_path)

    async def main() -> None:
        worker = CollectionWorker(linger_s=30)
        try:
            with pytest.raises(CollectionError, match="no key at"):
                await _collect(worker, tmp_path / "not-enrolled", "req-1", tmp_path / "w1")
            pid = worker.pid
            assert pid is not None
            await _collect(worker, home, "req-2", tmp_path / "w2")
            assert worker.pid == pid
        finally:
            await worker.close()
        assert worker.pid is None and _gone(pid)

    asyncio.run(main())


def test_a_child_that_dies_fails_its_request_and_is_replaced(tmp_path: Path) -> None:
    dies = (sys.executable, "-c", "import sys; sys.stdin.readline(); sys.exit(3)")

    async def main() -> None:
        worker = CollectionWorker(linger_s=30, command=dies)
        with pytest.raises(CollectionError, match="exited with code 3 before answering"):
            await _collect(worker, tmp_path, "req-1", tmp_path / "w1")
        assert worker.pid is None
        with pytest.raises(CollectionError, match="exited with code 3"):  # a fresh child, same fate
            await _collect(worker, tmp_path, "req-2", tmp_path / "w2")
        garbled = CollectionWorker(linger_s=30, command=(sys.executable, "-c", "print('not json', flush=True)"))
        with pytest.raises(CollectionError, match="malformed reply"):
            await _collect(garbled, tmp_path, "req-3", tmp_path / "w3")

    asyncio.run(main())


def test_stopping_mid_collection_terminates_the_child(tmp_path: Path) -> None:
    hangs = (sys.executable, "-c", "import sys, time; sys.stdin.readline(); time.sleep(600)")

    async def main() -> int:
        worker = CollectionWorker(linger_s=30, command=hangs)
        task = asyncio.create_task(_collect(worker, tmp_path, "req-1", tmp_path / "w1"))
        await _until(lambda: worker.pid is not None, "the child to start")
        pid = worker.pid
        assert pid is not None
        await asyncio.sleep(0.2)  # the request is written and the child is "collecting"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert worker.pid is None
        return pid

    assert _gone(asyncio.run(main()))


def test_an_upload_that_cannot_reach_the_collector_is_an_upload_error(tmp_path: Path) -> None:
    home, _ = _home(tmp_path)
    bundle = tmp_path / "b.tar.zst"
    bundle.write_bytes(b"x" * 1000)
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> None:
        worker = CollectionWorker(linger_s=0)
        with pytest.raises(UploadError, match="UNAVAILABLE"):
            await worker.upload(
                home=home,
                agent_id="ag_test",
                collector=f"127.0.0.1:{port}",
                ca_fingerprint=None,
                path=bundle,
                bundle_id="b" * 32,
                attempts=1,
            )
        await worker.close()

    asyncio.run(main())


def test_the_daemon_imports_nothing_of_the_collection_machinery() -> None:
    # What ``casefile-agent`` loads. (After a snapshot too: tests/e2e/test_live.py.)
    code = (
        "import json, sys, agent.daemon.service, agent.daemon; "
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(out.stdout)
    leaked = [m for m in loaded if any(m == n or m.startswith(n + ".") for n in DAEMON_NEVER_IMPORTS)]
    assert leaked == []


def test_a_wedged_child_is_stopped_at_the_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.daemon import worker as worker_module

    monkeypatch.setattr(worker_module, "COLLECT_DEADLINE_S", 0.5)
    hangs = (sys.executable, "-c", "import sys, time; sys.stdin.readline(); time.sleep(600)")

    async def main() -> int | None:
        worker = CollectionWorker(linger_s=30, command=hangs)
        task = asyncio.create_task(_collect(worker, tmp_path, "req-1", tmp_path / "w1"))
        await _until(lambda: worker.pid is not None, "the child to start")
        pid = worker.pid
        with pytest.raises(CollectionError, match=r"did not answer within 0.5 s; it was stopped"):
            await task
        assert worker.pid is None
        return pid

    pid = asyncio.run(main())
    assert pid is not None and _gone(pid)


def test_a_reply_over_the_limit_fails_the_request_and_replaces_the_child(tmp_path: Path) -> None:
    shouts = (sys.executable, "-c", "import sys; sys.stdin.readline(); print('x' * (3 << 20), flush=True)")

    async def main() -> None:
        worker = CollectionWorker(linger_s=30, command=shouts)
        with pytest.raises(CollectionError, match="reply unreadable"):
            await _collect(worker, tmp_path, "req-1", tmp_path / "w1")
        assert worker.pid is None  # out of step with the child: it is gone, the next request starts afresh

    asyncio.run(main())


def test_the_child_does_not_import_from_its_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child runs as the daemon's user (root under the unit): a ``json.py`` planted in
    the folder the daemon was started from must not be what it imports."""
    home, key = _home(tmp_path)
    marker = tmp_path / "planted-code-ran"
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    (cwd / "json.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom _json import *\n")
    monkeypatch.chdir(cwd)

    async def main() -> LiveBundle:
        worker = CollectionWorker(linger_s=0)
        try:
            return await _collect(worker, home, "req-1", tmp_path / "w1")
        finally:
            await worker.close()

    bundle = asyncio.run(main())
    assert not marker.exists()
    assert verify_bundle(bundle.path, expected_key=key.public).manifest.request_id == "req-1"
