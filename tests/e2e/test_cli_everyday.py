"""What a customer meets on a normal day: versions, a command line checked before any
work, attachments that are files, and a failed upload that still says where the bundle is."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from agent.attachments import check_attachment, open_attachment
from agent.redact.errors import RedactionError
from tests.e2e.test_cli import cli


@pytest.mark.parametrize("program", ["casefile", "casefile-collector"])
def test_version(program: str) -> None:
    res = cli(program, "--version")
    assert res.stdout.strip() == f"{program} 0.1.0", res.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--token", "cft_not-checked"], "--upload HOST:PORT"),
        (["--upload", "127.0.0.1:9"], "--token"),
        (["--add-file", "/nonexistent/app.conf"], "/nonexistent/app.conf: no such file"),
        (["--add-file", "/proc/kmsg"], "/proc/kmsg"),
        (["--add-file", "/proc/self/mem"], "/proc/self/mem"),
        (["--add-file", "/dev/zero"], "/dev/zero: a device"),
        (["--add-file", "/tmp"], "/tmp: a folder"),
    ],
)
def test_command_line_is_refused_before_any_collecting(tmp_path: Path, args: list[str], says: str) -> None:
    out = tmp_path / "out"
    res = cli("casefile", "collect", "-o", str(out), "--home", str(tmp_path / "home"), *args, check=False)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert says in " ".join(res.stderr.split()), res.stderr
    # Nothing was collected or written: no bundle, and no key made as a side effect.
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "home").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_is_refused_by_name_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(RedactionError, match=r"pipe: a device, FIFO or socket"):
        check_attachment(fifo)


def test_an_attachment_over_the_limit_or_growing_is_refused_by_name(tmp_path: Path) -> None:
    big = tmp_path / "big.log"
    big.write_bytes(b"x" * 1000)
    with pytest.raises(RedactionError, match=r"big.log: 1,000 bytes, over the 999-byte limit"):
        check_attachment(big, max_bytes=999)
    with open_attachment(big, max_bytes=1000) as fh:
        assert fh.read() == b"x" * 1000
    reader = open_attachment(big, max_bytes=1000)
    try:
        with big.open("ab") as grow:  # it grows between the check and the read
            grow.write(b"y")
        with pytest.raises(RedactionError, match=r"big.log: grew past the attachment limit"):
            while reader.read(64):
                pass
    finally:
        reader.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_attachment_in_proc_is_refused_even_when_it_stats_as_a_regular_file() -> None:
    assert Path("/proc/self/status").is_file()  # what fooled the old check
    with pytest.raises(RedactionError, match=r"on a proc filesystem"):
        check_attachment(Path("/proc/self/status"))


def test_failed_upload_shows_the_bundle_and_the_command_that_sends_it(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    out = tmp_path / "out"
    common = ["casefile", "collect", "--only", "host", "-o", str(out), "--home", str(tmp_path / "home"),
              "--upload", f"127.0.0.1:{port}", "--insecure", "--yes", "--token", "cft_x"]  # fmt: skip
    text = cli(*common, check=False, env={"CASEFILE_TOKEN": ""})
    assert text.returncode == 3, text.stderr
    (written,) = out.glob("*.tar.zst")
    flat = " ".join(text.stderr.split())
    assert f"The bundle stays at {written}" in flat, text.stderr
    assert f"casefile upload {written} --to 127.0.0.1:{port} --insecure" in flat, text.stderr
    assert "cft_x" not in text.stdout + text.stderr  # the token is never printed
    as_json = cli(*common, "--json", check=False)
    assert as_json.returncode == 3, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["upload"]["error"] and answer["upload"]["send_later"].startswith("casefile upload ")
    assert answer["casefile_version"] == "0.1.0"
