"""run_command / stream_lines: real processes, killed as a group at their budget."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from agent.collect import CommandNotFound, run_command, stream_lines

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses sh")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int) -> bool:
    for _ in range(100):
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


def test_output_status_and_env() -> None:
    result = run_command(
        ["sh", "-c", 'echo "out $CF_X"; echo err >&2; exit 3'],
        timeout=5,
        max_bytes=1000,
        env={"CF_X": "42"},
    )
    assert result.stdout == b"out 42\n" and result.stderr == b"err\n"
    assert result.returncode == 3 and not result.ok and not result.timed_out
    assert "exit status 3: err" in result.describe_failure()


def test_output_past_max_bytes_is_dropped_and_flagged() -> None:
    result = run_command(["sh", "-c", "yes | head -c 200000"], timeout=5, max_bytes=1000)
    assert result.ok and result.truncated and result.stdout == b"y\n" * 500


def test_a_hung_command_and_its_children_die_at_the_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    result = run_command(
        ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo started; wait"],
        timeout=0.5,
        max_bytes=1000,
    )
    assert result.timed_out and result.returncode is None and result.stdout == b"started\n"
    assert "killed after" in result.describe_failure()
    assert _wait_gone(int(pidfile.read_text()))  # the grandchild went with the group


def test_missing_executable_says_unsupported() -> None:
    with pytest.raises(CommandNotFound, match="unsupported: casefile-no-such-tool not found"):
        run_command(["casefile-no-such-tool"], timeout=1, max_bytes=10)
    with pytest.raises(CommandNotFound), stream_lines(["casefile-no-such-tool"], timeout=1, max_bytes=10):
        pass


def test_stream_lines_yields_lines_and_kills_at_the_deadline(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    argv = ["sh", "-c", f"echo $$ > {pidfile}; printf 'a\\nb\\r\\n'; sleep 60"]
    with stream_lines(argv, timeout=0.5, max_bytes=1000) as stream:
        lines = list(stream)
    assert lines == [b"a", b"b"]
    assert stream.result is not None and stream.result.timed_out
    assert _wait_gone(int(pidfile.read_text()))


def test_stream_lines_left_early_kills_the_command(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with stream_lines(["sh", "-c", f"echo $$ > {pidfile}; yes"], timeout=30, max_bytes=1 << 30) as stream:
        for n, _line in enumerate(stream):
            if n == 10:
                break
    assert stream.result is not None and not stream.result.timed_out
    assert _wait_gone(int(pidfile.read_text()))


def test_stream_lines_byte_cap() -> None:
    with stream_lines(["sh", "-c", "yes | head -n 1000"], timeout=5, max_bytes=20) as stream:
        lines = list(stream)
    assert lines == [b"y"] * 10
    assert stream.result is not None and stream.result.truncated
    assert stream.result.returncode == 0  # stopped by us at the cap: not its failure


def test_a_finished_stream_reports_its_exit_status() -> None:
    with stream_lines(["sh", "-c", "echo x; echo bad >&2; exit 4"], timeout=5, max_bytes=100) as stream:
        assert list(stream) == [b"x"]
    result = stream.result
    assert result is not None and result.returncode == 4 and result.stderr == b"bad\n"
