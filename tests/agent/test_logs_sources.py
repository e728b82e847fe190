"""The log sources' command glue, run against fake binaries first on PATH.

Each fake records its argv and prints output in the real command's recorded format
(journalctl -o json, dmesg -r, wevtutil RenderedXml, log show ndjson), so these tests
check the arguments the agent passes and what it makes of the answer, on any machine.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.analysis import BundleView, Evidence, run_rules
from agent.analysis.rules.refs import refs_category
from agent.collect import CollectionSpec, run_collection
from agent.collect.builtin.logs import LogsCollector
from agent.collect.builtin.logsources import (
    PartialSource,
    SourceUnavailable,
    Window,
    journal_source,
    kernel_source,
    macos_source,
    windows_source,
)
from agent.collect.logparse import JOURNAL_FIELDS, NewestFirstSink
from protos import facts_pb2

FIXTURES = Path(__file__).parent.parent / "fixtures" / "logs"
UTC = dt.UTC
CAT = shutil.which("cat") or "/bin/cat"  # by path: one test leaves only the fakes on PATH
JOURNAL_ARGS = ["-o", "json", "-r", "-q", "--no-pager", "--all", "--output-fields=" + ",".join(JOURNAL_FIELDS)]


class FakeBin:
    """A directory of fake commands put first on PATH; each appends its argv to a log."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, *, only: bool = False) -> None:
        self.dir = root / "bin"
        self.dir.mkdir()
        self.root = root
        path = str(self.dir) if only else f"{self.dir}{os.pathsep}{os.environ['PATH']}"
        monkeypatch.setenv("PATH", path)

    def add(self, name: str, *, stdout: bytes = b"", stderr: str = "", rc: int = 0, body: str = "") -> None:
        out = self.root / f"{name}.out"
        out.write_bytes(stdout)
        script = self.dir / name
        # One argument per line, one invocation per block: read back by calls().
        script.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\n' \"$@\" >> {self.root}/{name}.argv\n"
            f"echo '--' >> {self.root}/{name}.argv\n"
            f"{body}"
            f"{CAT} {out}\n" + (f"echo '{stderr}' >&2\n" if stderr else "") + f"exit {rc}\n"
        )
        script.chmod(0o755)

    def calls(self, name: str) -> list[list[str]]:
        log = self.root / f"{name}.argv"
        if not log.exists():
            return []
        calls: list[list[str]] = []
        current: list[str] = []
        for line in log.read_text().splitlines():
            if line == "--":
                calls.append(current)
                current = []
            else:
                current.append(line)
        return calls


def _window(tmp: Path, since: dt.datetime, priority: str = "") -> Window:
    return Window(since=since, deadline=time.monotonic() + 20, temp_dir=tmp, priority=priority)


def _sink(tmp: Path, name: str, cap: int = 1 << 20) -> NewestFirstSink:
    return NewestFirstSink(name, tmp / f"{name}.spool", cap)


def _rows(tmp: Path, sink: NewestFirstSink) -> list[dict[str, Any]]:
    out = tmp / f"{sink.name}.jsonl"
    sink.finish(out)
    return [json.loads(line) for line in out.read_bytes().splitlines()]


def _usec(t: dt.datetime) -> str:
    return str(int(t.timestamp() * 1_000_000))


def _journal_line(t: dt.datetime, message: object, priority: str = "6", **fields: str) -> bytes:
    entry = {
        "__CURSOR": "s=6f1c;i=2a4f;b=91e0;m=1f;t=5f2;x=77",
        "__REALTIME_TIMESTAMP": _usec(t),
        "__MONOTONIC_TIMESTAMP": "882137716",
        "_BOOT_ID": "91e0c2b4a4c84b6b9f53c3f0d1a2b3c4",
        "PRIORITY": priority,
        "MESSAGE": message,
        **fields,
    }
    return json.dumps(entry).encode() + b"\n"


def test_journal_arguments_and_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBin(tmp_path, monkeypatch)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    long_msg = "x" * 20_000  # with --all this arrives whole, not as null
    fake.add(
        "journalctl",
        stdout=b"".join(
            [
                _journal_line(now, long_msg, "3", SYSLOG_IDENTIFIER="app", _PID="41", _SYSTEMD_UNIT="app.service"),
                _journal_line(now - dt.timedelta(seconds=1), [*b"caf\xc3\xa9 ", 0xFF], "4"),
                _journal_line(now - dt.timedelta(seconds=2), ["first", "second"], "6"),  # a repeated field
                _journal_line(now - dt.timedelta(seconds=3), None, "6"),  # an older journalctl's null
                b"not json\n",
            ]
        ),
    )
    since = now - dt.timedelta(hours=2)
    sink = _sink(tmp_path, "journal")
    origin = journal_source(sink, _window(tmp_path, since, priority="warning"))

    (argv,) = fake.calls("journalctl")
    assert argv == [*JOURNAL_ARGS, "--since", f"@{int(since.timestamp())}", "--priority", "warning"]
    assert origin == "journalctl " + " ".join(argv)
    rows = _rows(tmp_path, sink)
    assert [r["sev"] for r in rows] == ["info", "info", "warning", "err"]  # oldest first
    null, repeated, binary, long = rows
    assert "too large" in str(null["msg"])
    assert repeated["msg"] == "first\nsecond"
    assert binary["msg"] == "café \ufffd"
    assert long["msg"] == "x" * 16 * 1024 + "…"
    assert (long["ident"], long["pid"], long["unit"]) == ("app", 41, "app.service")
    assert long["ts"] == now.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def test_journal_kernel_flag_and_no_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBin(tmp_path, monkeypatch)
    now = dt.datetime.now(UTC)
    fake.add("journalctl", stdout=_journal_line(now, "usb 1-1: new high-speed USB device", "6", _TRANSPORT="kernel"))
    since = now - dt.timedelta(minutes=30)
    sink = _sink(tmp_path, "kernel")
    journal_source(sink, _window(tmp_path, since), kernel=True)
    (argv,) = fake.calls("journalctl")
    assert argv == [*JOURNAL_ARGS, "--since", f"@{int(since.timestamp())}", "-k"]
    (row,) = _rows(tmp_path, sink)
    assert row["transport"] == "kernel" and row["msg"].startswith("usb 1-1")


def test_journalctl_without_output_fields_is_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # systemd < 236 (CentOS 7) has --all but not --output-fields; it refuses before printing.
    fake = FakeBin(tmp_path, monkeypatch)
    now = dt.datetime.now(UTC)
    refuse = (
        'case "$*" in *--output-fields=*) '
        "echo \"journalctl: unrecognized option '--output-fields=MESSAGE'\" >&2; exit 1;; esac\n"
    )
    fake.add("journalctl", stdout=_journal_line(now, "sshd started"), body=refuse)
    sink = _sink(tmp_path, "journal")
    origin = journal_source(sink, _window(tmp_path, now - dt.timedelta(hours=1)))
    first, second = fake.calls("journalctl")
    assert "--all" in first and any(a.startswith("--output-fields=") for a in first)
    # Without --output-fields, --all would print binary fields whole: neither is asked for.
    assert "--all" not in second and not any(a.startswith("--output-fields=") for a in second)
    assert "--output-fields" not in origin
    assert [r["msg"] for r in _rows(tmp_path, sink)] == ["sshd started"]


def test_a_failing_journalctl_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBin(tmp_path, monkeypatch)
    fake.add("journalctl", stderr="No journal files were found.", rc=1)
    sink = _sink(tmp_path, "journal")
    with pytest.raises(SourceUnavailable, match="No journal files were found"):
        journal_source(sink, _window(tmp_path, dt.datetime.now(UTC) - dt.timedelta(hours=1)))
    assert len(fake.calls("journalctl")) == 1  # no retry: the refusal was not about --output-fields
    sink.discard()


def _boot() -> dt.datetime:
    return dt.datetime.fromtimestamp(psutil.boot_time(), UTC)


DMESG = b"""<6>[    0.000000] Linux version 6.1.0-13-amd64 (debian-kernel@lists.debian.org)
<6>[   12.000000] EXT4-fs (sda1): mounted filesystem with ordered data mode
<3>[  150.500000] ata1.00: failed command: READ FPDMA QUEUED
<4>[  300.000000] EXT4-fs warning (device sda1): ext4_end_bio:343: I/O error 10 writing to inode 2
"""


def test_kernel_falls_back_to_dmesg_when_journal_and_kmsg_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBin(tmp_path, monkeypatch)
    fake.add("journalctl", stderr="No journal files were found.", rc=1)
    fake.add("dmesg", stdout=DMESG)
    boot = _boot()
    sink = _sink(tmp_path, "kernel")
    window = _window(tmp_path, boot + dt.timedelta(seconds=100))  # the first lines are older
    origin = kernel_source(sink, window, systemd=True, kmsg=tmp_path / "no-kmsg")

    (journal_argv,) = fake.calls("journalctl")
    assert "-k" in journal_argv and "--all" in journal_argv
    assert fake.calls("dmesg") == [["-r"]]
    assert origin == "dmesg -r"
    rows = _rows(tmp_path, sink)
    assert [(r["sev"], r["msg"][:14]) for r in rows] == [("err", "ata1.00: faile"), ("warning", "EXT4-fs warnin")]
    first = dt.datetime.strptime(str(rows[0]["ts"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((first - boot).total_seconds() - 150.5) < 1e-3


def test_kernel_without_journalctl_reads_kmsg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Booted with systemd but journalctl is not installed (a slim container image): the
    # ring buffer is still read. One record in a plain file reads as /dev/kmsg does.
    fake = FakeBin(tmp_path, monkeypatch, only=True)
    fake.add("dmesg", stdout=DMESG)
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(b"3,4711,150500000,-;nvme0: I/O 12 QID 3 timeout, aborting\n SUBSYSTEM=nvme\n DEVICE=c250:0\n")
    boot = _boot()
    sink = _sink(tmp_path, "kernel")
    origin = kernel_source(sink, _window(tmp_path, boot), systemd=True, kmsg=kmsg)
    assert origin == str(kmsg)
    assert fake.calls("dmesg") == []
    (row,) = _rows(tmp_path, sink)
    assert row["sev"] == "err" and row["msg"].startswith("nvme0: I/O 12")
    assert (row["seq"], row["subsystem"]) == (4711, "nvme")


def test_kernel_with_nothing_readable_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBin(tmp_path, monkeypatch)
    fake.add("dmesg", stderr="dmesg: read kernel buffer failed: Operation not permitted", rc=1)
    sink = _sink(tmp_path, "kernel")
    with pytest.raises(SourceUnavailable, match="no-kmsg unreadable and dmesg -r: exit status 1"):
        kernel_source(sink, _window(tmp_path, _boot()), systemd=False, kmsg=tmp_path / "no-kmsg")
    assert fake.calls("dmesg") == [["-r"]]
    sink.discard()


def _timediff_ms(argv: list[str]) -> int:
    m = re.fullmatch(r"/q:\*\[System\[TimeCreated\[timediff\(@SystemTime\) <= (\d+)\]\]\]", argv[2])
    assert m, argv
    return int(m[1])


def test_wevtutil_arguments_and_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBin(tmp_path, monkeypatch)
    fake.add("wevtutil", stdout=(FIXTURES / "wevtutil_system_en.xml").read_bytes())
    sink = _sink(tmp_path, "windows-system")
    before = time.time()
    origin = windows_source(sink, _window(tmp_path, dt.datetime.now(UTC) - dt.timedelta(hours=2)), "System")
    (argv,) = fake.calls("wevtutil")
    assert argv[:2] == ["qe", "System"] and argv[3:] == ["/f:RenderedXml", "/rd:true", "/c:50000"]
    assert abs(_timediff_ms(argv) - 7_200_000) <= (time.time() - before) * 1000 + 1000
    assert origin == "wevtutil " + " ".join(argv)
    assert sink.event_id_counts["Service Control Manager/7031"] == 1
    rows = _rows(tmp_path, sink)
    # wevtutil /rd:true prints newest first; the artifact is oldest first.
    assert [r["event_id"] for r in rows] == [6013, 153, 41, 98, 7031]
    assert rows[-1]["sev"] == "err" and "terminated unexpectedly" in str(rows[-1]["msg"])


def test_wevtutil_output_over_the_cap_keeps_the_newest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBin(tmp_path, monkeypatch)
    event = (FIXTURES / "wevtutil_system_en.xml").read_bytes()
    copies = (1 << 20) // len(event) + 50  # past the 1 MiB the source reads at most
    fake.add(
        "wevtutil",
        body=f"i=0; while [ $i -lt {copies} ]; do {CAT} {FIXTURES}/wevtutil_system_en.xml; i=$((i+1)); done\n",
    )
    sink = _sink(tmp_path, "windows-system", cap=4096)
    with pytest.raises(PartialSource, match="output cut at the byte cap"):
        windows_source(sink, _window(tmp_path, dt.datetime.now(UTC) - dt.timedelta(hours=1)), "System")
    assert sink.truncated and sink.lines_dropped > 0 and 0 < sink.bytes <= 4096
    # Every event read is counted, also those past the cap (all but the cut last copy).
    assert sink.event_id_counts["Service Control Manager/7031"] >= (1 << 20) // len(event) - 1
    rows = _rows(tmp_path, sink)
    assert rows[-1]["event_id"] == 7031  # the first printed (newest) event is kept


def test_wevtutil_missing_channel_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBin(tmp_path, monkeypatch)
    fake.add("wevtutil", stderr="Failed to read events. The specified channel could not be found.", rc=15007)
    sink = _sink(tmp_path, "windows-refs")
    with pytest.raises(SourceUnavailable, match="channel could not be found"):
        windows_source(sink, _window(tmp_path, dt.datetime.now(UTC)), "Microsoft-Windows-ReFS/Operational")
    (argv,) = fake.calls("wevtutil")
    assert argv[1] == "Microsoft-Windows-ReFS/Operational"
    sink.discard()


def test_log_show_arguments_and_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBin(tmp_path, monkeypatch)
    fake.add("log", stdout=(FIXTURES / "macos_unified.ndjson").read_bytes())
    sink = _sink(tmp_path, "unified")
    since = dt.datetime.now(UTC) - dt.timedelta(minutes=90, seconds=30)
    origin = macos_source(sink, _window(tmp_path, since))
    (argv,) = fake.calls("log")
    minutes = math.ceil((dt.datetime.now(UTC) - since).total_seconds() / 60)
    assert argv[:4] == ["show", "--style", "ndjson", "--last"] and argv[4] in (f"{minutes - 1}m", f"{minutes}m")
    assert len(argv) == 5 and origin == "log " + " ".join(argv)
    rows = _rows(tmp_path, sink)
    # The summary line and the junk line are not events; the rest keep the printed order.
    assert [r["msg"] for r in rows][:2] == [
        'Filtering the log data using "process == \\"kernel\\""',
        "APFS: disk3s5 txg 99412 flush took 8123 ms",
    ]
    assert len(rows) == 5 and rows[1]["sev"] == "err" and rows[1]["subsystem"] == "com.apple.apfs"


def test_log_show_failure_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBin(tmp_path, monkeypatch)
    fake.add("log", stderr="log: Cannot run while sandboxed", rc=64)
    sink = _sink(tmp_path, "unified")
    with pytest.raises(SourceUnavailable, match="exit status 64"):
        macos_source(sink, _window(tmp_path, dt.datetime.now(UTC) - dt.timedelta(hours=1)))
    sink.discard()


def test_logs_collector_passes_window_and_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBin(tmp_path, monkeypatch)
    now = dt.datetime.now(UTC)
    fake.add("journalctl", stdout=_journal_line(now, "disk full", "3"))
    spec = CollectionSpec(only=("logs",), options={"logs_since_s": 7200.0, "logs_priority": "err"})
    start = time.time()
    with run_collection(spec, collectors=[LogsCollector]) as result:
        (status,) = result.statuses
        assert status.state == facts_pb2.CollectorStatus.OK, status.error
        journal = {s.name: s for s in result.snapshot.logs.sources}["journal"]
        assert journal.lines >= 1 and journal.artifact == "logs/journal.jsonl"
    journal_call = next(c for c in fake.calls("journalctl") if "-k" not in c)
    since = int(journal_call[journal_call.index("--since") + 1].lstrip("@"))
    assert abs(since - (start - 7200)) <= 5
    assert journal_call[-2:] == ["--priority", "err"] and "--all" in journal_call


def test_refs_events_from_wevtutil_become_a_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ReFS/Operational channel read through wevtutil, counted, and judged by the refs-events rule."""
    fake = FakeBin(tmp_path, monkeypatch)
    fake.add("wevtutil", stdout=(FIXTURES / "wevtutil_refs_de.xml").read_bytes())
    sink = _sink(tmp_path, "windows-refs")
    since = dt.datetime.now(UTC) - dt.timedelta(days=30)
    windows_source(sink, _window(tmp_path, since), "Microsoft-Windows-ReFS/Operational")
    snapshot = facts_pb2.Snapshot()
    source = snapshot.logs.sources.add(name="windows-refs")
    sink.fill(source)
    sink.discard()
    assert dict(source.event_id_counts) == {"ReFS/147": 2, "ReFS/149": 1}
    (finding,) = [f for f in run_rules(BundleView.from_snapshot(snapshot, [])).findings if f.code == "refs-events"]
    assert finding.severity == "critical"  # a failed I/O
    assert "2 slow I/O" in finding.title and "1 failed I/O" in finding.title
    assert {e.fact_path for e in finding.evidence if isinstance(e, Evidence)} == {
        'logs.sources[0].event_id_counts["ReFS/147"]',
        'logs.sources[0].event_id_counts["ReFS/149"]',
    }
    # The same ids in the System channel are not these events; System's 130-143 are corruption.
    assert refs_category("windows-system", "ReFS/147") is None
    assert refs_category("windows-system", "ReFS/133") == "corruption"
    assert refs_category("windows-refs", "ReFS/142") is None  # a periodic space report
    assert refs_category("windows-refs", "Ntfs/147") is None
