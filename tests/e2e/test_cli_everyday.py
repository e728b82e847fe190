"""What a customer meets on a normal day: versions, a command line checked before any
work, attachments that are files, and a failed upload that still says where the bundle is."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.attachments import AttachmentError, check_attachment, open_attachment
from tests.e2e.test_cli import BIN, cli, served

__all__ = ["served"]  # the collector fixture, shared with test_cli


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
    with pytest.raises(AttachmentError, match=r"pipe: a device, FIFO or socket"):
        check_attachment(fifo)


def test_an_attachment_over_the_limit_or_growing_is_refused_by_name(tmp_path: Path) -> None:
    big = tmp_path / "big.log"
    big.write_bytes(b"x" * 1000)
    with pytest.raises(AttachmentError, match=r"big.log: 1,000 bytes, over the 999-byte limit"):
        check_attachment(big, max_bytes=999)
    with open_attachment(big, max_bytes=1000) as fh:
        assert fh.read() == b"x" * 1000
    reader = open_attachment(big, max_bytes=1000)
    try:
        with big.open("ab") as grow:  # it grows between the check and the read
            grow.write(b"y")
        with pytest.raises(AttachmentError, match=r"big.log: grew past the attachment limit"):
            while reader.read(64):
                pass
    finally:
        reader.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_attachment_in_proc_is_refused_even_when_it_stats_as_a_regular_file() -> None:
    assert Path("/proc/self/status").is_file()  # what fooled the old check
    with pytest.raises(AttachmentError, match=r"on a proc filesystem"):
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


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["collect", "--profile", "bogus", "--only", "host"], "unknown 'bogus'"),
        (["timeline", "missing.tar.zst", "--interval", "banana"], "interval must look like"),
    ],
)
def test_customer_usage_errors_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    res = cli("casefile", *args, "--home", str(tmp_path / "home"), check=False) if args[0] == "collect" else cli(
        "casefile", *args, check=False
    )
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert says in " ".join(res.stderr.split()), res.stderr


def test_engineer_errors_in_plain_words_and_filters_that_find_what_the_table_shows(
    served: dict[str, str], tmp_path: Path
) -> None:
    s = served
    data_env = {"CASEFILE_DATA_DIR": s["data"]}
    admin = cli("casefile-collector", "token", "create", "--kind", "engineer", "--role", "admin",
                "--label", "alice", "-q", env=data_env).stdout.strip()  # fmt: skip
    env = {"CASEFILE_COLLECTOR": s["addr"], "CASEFILE_TOKEN": admin, "CASEFILE_CA_FINGERPRINT": s["fp"]}

    # No pin: the fix in words, on one line, no grpc core log lines around it.
    unpinned = cli("casefile-collector", "hosts", env={**env, "CASEFILE_CA_FINGERPRINT": ""}, check=False)
    assert unpinned.returncode == 3, unpinned.stderr
    flat = " ".join(unpinned.stderr.split())
    assert "certificate is not trusted" in flat and "CASEFILE_CA_FINGERPRINT" in flat, unpinned.stderr
    assert unpinned.stderr.strip().count("\n") == 0, unpinned.stderr

    # Usage errors are 2: a page size below one, an id the collector finds malformed.
    assert cli("casefile-collector", "hosts", "--limit", "-5", env=env, check=False).returncode == 2
    malformed = cli("casefile-collector", "show", "not-a-bundle-id", env=env, check=False)
    assert malformed.returncode == 2, malformed.stderr

    cli("casefile-collector", "hosts", env=env)
    # The audit table shows "alice (tok_…)" and "query.list_hosts": both find it.
    by_label = json.loads(cli("casefile-collector", "audit", "--actor", "alice", "--json", env=env).stdout)
    assert by_label and all(e["actor_label"] == "alice" for e in by_label)
    by_part = json.loads(cli("casefile-collector", "audit", "--action", "list_hosts", "--json", env=env).stdout)
    assert {e["action"] for e in by_part} == {"query.list_hosts"}
    by_group = json.loads(cli("casefile-collector", "audit", "--action", "query", "--json", env=env).stdout)
    assert {e["action"] for e in by_group} >= {"query.list_hosts", "query.list_audit"}
    none = cli("casefile-collector", "audit", "--actor", "nobody-by-this-name", "--json", env=env)
    assert json.loads(none.stdout) == []


def test_token_list_reads_and_never_makes_a_data_folder(tmp_path: Path) -> None:
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    res = subprocess.run(
        [str(BIN / "casefile-collector"), "token", "list"],
        cwd=empty,
        env={k: v for k, v in os.environ.items() if k != "CASEFILE_DATA_DIR"} | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert f"no collector data in {empty / 'casefile-data'}" in " ".join(res.stderr.split())
    assert list(empty.iterdir()) == []
    data = tmp_path / "data"
    made = cli("casefile-collector", "token", "create", "--kind", "enroll", "--data-dir", str(data))
    token_id = made.stdout.split("token id ", 1)[1].split()[0]
    listed = cli("casefile-collector", "token", "list", "--data-dir", str(data), env={"COLUMNS": "60"}).stdout
    assert f"Tokens in {data}" in " ".join(listed.split()) and token_id in listed


def test_agent_history_json_is_one_document_even_when_empty(tmp_path: Path) -> None:
    res = cli("casefile", "agent", "history", "--home", str(tmp_path / "home"), "--json")
    assert json.loads(res.stdout) == []


def test_serve_with_a_port_out_of_range_says_so_and_exits_2(tmp_path: Path) -> None:
    res = cli("casefile-collector", "serve", "--address", "127.0.0.1:99999", "--data-dir", str(tmp_path / "d"),
              check=False)  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "port 99999" in res.stderr and "out of range" in " ".join(res.stderr.split())
