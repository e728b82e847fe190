"""The agent service from the single file, as the systemd unit starts it: the unit
verifies (``systemd-analyze verify``) with its ExecStart pointing at a ``casefile-agent``
symlink to the file, and that exact command line connects to a real collector on
loopback and serves a live snapshot, whose collection runs in the file's own worker
child (``<file> agent-worker``; an installed agent runs ``python -m agent.daemon.execute``).

Run by ``make test-dist``; skipped when the file is not built.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.test_unit_file import UNIT, exec_start, verify_unit
from tests.dist.test_single_file import SINGLE
from tests.e2e.test_live import HOSTNAME, Collector, Live, _tokens, connects, enroll_agent, free_port, wait_for

pytestmark = pytest.mark.skipif(not SINGLE.exists(), reason=f"{SINGLE.name} not built: run `make test-dist`")


@pytest.fixture
def linked(tmp_path: Path) -> Path:
    """``casefile-agent`` as the README installs it: a symlink to the single file."""
    link = tmp_path / "bin" / "casefile-agent"
    link.parent.mkdir()
    link.symlink_to(SINGLE)
    return link


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze on this machine")
def test_the_unit_verifies_with_the_single_file(linked: Path, tmp_path: Path) -> None:
    verify_unit(tmp_path, linked)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(data=tmp_path / "data", port=free_port(), log=tmp_path / "collector.log")
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_the_units_command_line_serves_a_live_snapshot(linked: Path, collector: Collector, tmp_path: Path) -> None:
    agent = enroll_agent(collector, tmp_path / "home", HOSTNAME)
    argv = exec_start(UNIT.read_text())
    assert argv[0] == "/usr/local/bin/casefile-agent" and argv[1:] == ["--home", "/var/lib/casefile"], argv
    argv = [str(linked), "--home", str(agent.home)]
    env = {**os.environ, "CASEFILE_AGENT_BACKOFF_MAX": "0.5", "CASEFILE_AGENT_BACKOFF_BASE": "0.1"}
    with agent.log.open("a") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for("the single file's agent connected", lambda: connects(collector, agent.agent_id) > 0,
                 timeout=60, logs=agent.log.read_text)  # fmt: skip
        events = Live(collector, agent, _tokens(collector)).snapshot(reason="single file")
        assert events[-1].state == "done", (events[-1], agent.log.read_text())
        bundle_id = events[-1].bundle_id
        with collector.store() as store:
            rec = store.get_bundle(bundle_id)
        assert rec.kind == "live" and rec.agent_id == agent.agent_id
        assert [e["outcome"] for e in agent.history()][-2:] == ["accepted", "done"], agent.history()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, agent.log.read_text()


def test_the_flight_recorder_runs_from_the_single_file(tmp_path: Path) -> None:
    """``python -m agent.daemon.recorder`` has no -m here: ``casefile agent-recorder``."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    log = tmp_path / "recorder.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([str(SINGLE), "agent-recorder", "--home", str(home), "--interval", "0.3"],
                                stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip

    def recorded() -> int:
        res = subprocess.run([str(SINGLE), "agent", "history", "--metrics", "--home", str(home), "--json"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        return int(json.loads(res.stdout)["sample_count"]) if res.returncode == 0 else 0

    try:
        deadline = time.monotonic() + 60
        while recorded() < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert recorded() >= 2, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()
