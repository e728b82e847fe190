"""``casefile-collector serve`` on an address another collector already listens on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.transport import open_channel, parse_address

BIN = Path(sys.executable).parent


def _serve(data: Path, address: str, ready: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as fh:
        return subprocess.Popen(
            [str(BIN / "casefile-collector"), "serve", "--address", address, "--ready-file", str(ready)],
            env={**os.environ, "CASEFILE_DATA_DIR": str(data)},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def first(tmp_path: Path) -> Iterator[dict[str, str]]:
    ready = tmp_path / "first.json"
    log = tmp_path / "first.log"
    proc = _serve(tmp_path / "first", "127.0.0.1:0", ready, log)
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), log.read_text()
        yield json.loads(ready.read_text())
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0, log.read_text()


def test_second_serve_on_a_port_in_use_refuses_and_the_first_keeps_serving(
    first: dict[str, str], tmp_path: Path
) -> None:
    ready = tmp_path / "second.json"
    log = tmp_path / "second.log"
    second = _serve(tmp_path / "second", first["address"], ready, log)
    try:
        code = second.wait(30)
    except subprocess.TimeoutExpired:
        second.terminate()
        second.wait(20)
        pytest.fail(f"a second collector started on {first['address']}:\n{log.read_text()}")
    output = log.read_text()
    assert code == 2, output
    assert f"cannot listen on {first['address']}: port {first['port']} is already in use" in output
    assert "serving on" not in output and "Traceback" not in output
    assert not ready.exists()
    # Every new connection reaches the one collector there (its certificate, its answer).
    for _ in range(10):
        with open_channel(parse_address(first["address"]), ca_fingerprint=first["fingerprint"]) as ch:
            answer = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def _open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc/PID/limits")
@pytest.mark.parametrize("hard_too", [False, True], ids=["soft-below-hard", "hard-low"])
def test_serve_raises_its_open_files_limit_to_the_hard_one(tmp_path: Path, hard_too: bool) -> None:
    """Each agent connection is a descriptor: a collector started with the usual soft limit
    of 1024 raises it itself; when the hard limit is low too, its log says so."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 512
    if hard == resource.RLIM_INFINITY or hard <= low:
        pytest.skip(f"hard open files limit {hard}: unlimited, or already at most {low}")
    ready, log = tmp_path / "ready.json", tmp_path / "serve.log"

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, low if hard_too else hard))

    with log.open("w") as fh:
        proc = subprocess.Popen(
            [str(BIN / "casefile-collector"), "serve", "--address", "127.0.0.1:0", "--ready-file", str(ready)],
            env={**os.environ, "CASEFILE_DATA_DIR": str(tmp_path / "data")},
            stdout=fh,
            stderr=subprocess.STDOUT,
            preexec_fn=lower,
        )
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), log.read_text()
        soft_now, hard_now = _open_files_limits(proc.pid)
        if hard_too:
            assert (soft_now, hard_now) == (low, low)
            assert f"open files limit {low} (hard {low})" in log.read_text()
        else:
            assert hard_now == hard and soft_now == hard
            assert "open files limit" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0, log.read_text()
