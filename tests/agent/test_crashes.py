"""Crash artefacts: coredumps (from coredumpctl's output format: this machine has no
systemd-coredump), the previous boot's kernel lines (real journalctl), /var/crash (a real folder)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.analysis import BundleView
from agent.collect import CollectionSpec
from agent.collect.builtin.crashes import crash_lines, parse_coredump_info, parse_coredump_list
from agent.keys import SigningKey
from agent.oneshot import collect_bundle
from agent.scopes import SCOPE_COLLECTORS, collectors_for
from protos import facts_pb2

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "crashes"
linux = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux collectors")


def test_the_coredump_list_is_read_newest_first() -> None:
    dumps = parse_coredump_list((FIXTURES / "coredumpctl_list.json").read_text())
    assert [d.executable for d in dumps] == [
        "/usr/sbin/nginx",
        "/opt/app/bin/worker",
        "/usr/lib/systemd/systemd-journald",
    ]
    first = dumps[0]
    assert (first.pid, first.uid, first.signal, first.signal_name) == (48121, 998, 11, "SIGSEGV")
    assert first.corefile == "present" and first.size == 1852211
    assert first.time.ToMicroseconds() == 1733563004123456
    assert dumps[1].size == 0 and dumps[1].signal_name == "SIGABRT"  # "size": null: not stored


def test_coredump_info_keeps_the_crashing_threads_frames() -> None:
    info = parse_coredump_info((FIXTURES / "coredumpctl_info_48121.txt").read_text())
    assert info["Command Line"] == "nginx: worker process" and info["Unit"] == "nginx.service"
    stack = info["stack"]
    assert isinstance(stack, list) and len(stack) == 6  # the first thread only
    assert stack[0] == "#0 0x00007f3a1c2b4e31 ngx_http_upstream_process_header (nginx + 0x8ae31)"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_coredumpctl_output_never_breaks_the_parsers(text: str) -> None:
    with contextlib.suppress(ValueError):  # refused as unreadable: the collector says so in its detail
        parse_coredump_list(text)
    parse_coredump_info(text)
    assert len(crash_lines(text)) <= 200


def test_crash_lines_are_the_kernels_crash_words() -> None:
    log = (
        "2024-12-06T10:00:00+0000 web-3 kernel: eth0: link up\n"
        "2024-12-06T10:05:01+0000 web-3 kernel: BUG: unable to handle page fault for address: ffff9\n"
        "2024-12-06T10:05:01+0000 web-3 kernel: Oops: 0000 [#1] PREEMPT SMP NOPTI\n"
        "2024-12-06T10:05:01+0000 web-3 kernel: Call Trace:\n"
        "2024-12-06T10:05:02+0000 web-3 kernel: Kernel panic - not syncing: Fatal exception\n"
        "2024-12-06T10:05:02+0000 web-3 kernel: usb 1-1: new device\n"
    )
    lines = crash_lines(log)
    assert len(lines) == 4 and "link up" not in " ".join(lines) and lines[-1].endswith("Fatal exception")


def _fake_coredumpctl(bin_dir: Path) -> None:
    """coredumpctl as a machine with systemd-coredump answers (its output format, from a file)."""
    bin_dir.mkdir()
    script = bin_dir / "coredumpctl"
    script.write_text(
        "#!/bin/sh\n"
        f'for a in "$@"; do case "$a" in list) cat {FIXTURES}/coredumpctl_list.json; exit 0;; '
        f"48121) cat {FIXTURES}/coredumpctl_info_48121.txt; exit 0;; esac; done\n"
        "echo 'No match found.' >&2; exit 1\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@linux
def test_the_crashes_scope_in_a_real_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert collectors_for(("crashes",)) == ("host", *SCOPE_COLLECTORS["crashes"])
    _fake_coredumpctl(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    crash = tmp_path / "crash"
    (crash / "202412061005").mkdir(parents=True)
    (crash / "202412061005" / "dmesg.202412061005").write_text("Kernel panic\n")
    (crash / "_usr_sbin_nginx.998.crash").write_bytes(b"x" * 4096)
    os.utime(crash / "202412061005" / "dmesg.202412061005", (time.time() - 86400,) * 2)
    spec = CollectionSpec(
        only=collectors_for(("crashes",)), options={"crash_dir": str(crash), "pstore_dir": str(tmp_path / "none")}
    )
    done = collect_bundle(key=SigningKey.generate(), output_dir=tmp_path / "out", spec=spec)
    s = BundleView.from_file(done.bundle.path).snapshot
    status = {c.name: (c.state, c.error) for c in s.collectors}
    assert all(status[n][0] == facts_pb2.CollectorStatus.OK for n in SCOPE_COLLECTORS["crashes"]), status
    assert [d.executable for d in s.coredumps.coredumps][:1] == ["/usr/sbin/nginx"]
    assert s.coredumps.total == 3 and s.coredumps.coredumps[0].unit == "nginx.service"
    assert s.coredumps.coredumps[0].stack[0].startswith("#0 0x00007f3a1c2b4e31 ngx_http_upstream_process_header")
    assert not s.coredumps.coredumps[1].stack  # "No match found": a warning, not a failure
    # /var/crash as listed: newest first, one level of subfolders (kdump's).
    assert [Path(f.path).name for f in s.crash_files.files] == ["_usr_sbin_nginx.998.crash", "dmesg.202412061005"]
    assert s.crash_files.files[0].size == 4096 and s.crash_files.total == 2
    # The previous boot, from this machine's real journalctl: lines, or why there are none.
    k = s.kernel_crashes
    assert "pstore: no such folder" in k.detail
    if shutil.which("journalctl") is None:
        assert "journalctl not found" in k.detail
    else:
        assert all(crash_lines(line) for line in k.previous_boot)
        # Here: no journal of an earlier boot (journalctl says so, exit 1): said, not failed.
        assert k.previous_boot or "previous boot: " in k.detail, k.detail


@linux
def test_no_coredumpctl_is_said_not_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there: coredumpctl and journalctl missing
    spec = CollectionSpec(only=("host", "coredumps", "crash_files"), options={"crash_dir": str(tmp_path / "x")})
    done = collect_bundle(key=SigningKey.generate(), output_dir=tmp_path / "out", spec=spec)
    s = BundleView.from_file(done.bundle.path).snapshot
    assert s.coredumps.detail == "unsupported: coredumpctl not found" and not s.coredumps.coredumps
    assert s.crash_files.detail.endswith("no such folder")
