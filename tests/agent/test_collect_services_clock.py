"""Services, clock and time series: parsers on recorded Windows/macOS output, real runs here."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.collect import CollectContext, CollectionSpec, Collector, run_collection
from agent.collect.builtin import clock as clock_module
from agent.collect.builtin import timeseries as timeseries_module
from agent.collect.builtin.clock import (
    ClockCollector,
    kernel_clock,
    parse_chrony_tracking,
    parse_ntpq_peers,
    parse_timedatectl_show,
    parse_w32tm_status,
)
from agent.collect.builtin.services import (
    ServicesCollector,
    parse_launchctl_list,
    parse_systemctl_json,
    parse_systemctl_plain,
    parse_systemctl_show,
    parse_win32_services,
)
from agent.collect.builtin.timeseries import TimeseriesCollector
from protos import facts_pb2

FIXTURES = Path(__file__).parent.parent / "fixtures"
OK = facts_pb2.CollectorStatus.OK


def test_windows_stopped_auto_start_services() -> None:
    total, failed = parse_win32_services((FIXTURES / "services" / "win32_service.json").read_text())
    assert total == 6
    assert [(s.name, s.state, s.sub_state, s.result) for s in failed] == [
        ("VeeamBackupSvc", "Stopped", "Auto", "exit code 1067"),
        ("wuauserv", "Stopped", "Auto (delayed)", ""),
    ]
    assert failed[0].description == "Veeam Backup Service"


def test_windows_single_service_object_with_bom() -> None:
    text = (FIXTURES / "services" / "win32_service_single.json").read_bytes().decode("utf-8")
    total, failed = parse_win32_services(text)
    assert total == 1 and [s.state for s in failed] == ["Start Pending"]


def test_launchd_nonzero_exit_status() -> None:
    total, failed = parse_launchctl_list((FIXTURES / "services" / "launchctl_list.txt").read_text())
    assert total == 5
    assert [(s.name, s.state, s.result) for s in failed] == [
        ("com.example.backup-agent", "stopped", "exit status 78"),
        ("com.apple.mdworker.shared.0B000000-0000-0000-0000-000000000000", "stopped", "killed by signal 9"),
        ("com.apple.WindowServer", "running", "killed by signal 15"),
    ]


def test_systemctl_json_and_plain() -> None:
    rows = parse_systemctl_json(
        '[{"unit":"backup.service","load":"loaded","active":"failed","sub":"failed","description":"Nightly backup"}]'
    )
    assert [(r.name, r.state, r.sub_state, r.description) for r in rows] == [
        ("backup.service", "failed", "failed", "Nightly backup")
    ]
    plain = parse_systemctl_plain(
        "● backup.service loaded failed failed Nightly backup job\nshort line\n"
        "ssh.service loaded active running OpenBSD Secure Shell server\n"
    )
    assert [(r.name, r.state, r.description) for r in plain] == [
        ("backup.service", "failed", "Nightly backup job"),
        ("ssh.service", "active", "OpenBSD Secure Shell server"),
    ]
    with pytest.raises(ValueError):
        parse_systemctl_json('{"not": "a list"}')
    gone = parse_systemctl_json('[{"unit":"old.service","load":"not-found","active":"failed","sub":"failed"}]')
    assert [r.result for r in rows + plain + gone] == ["", "", "", "load: not-found"]


# `systemctl show -p Id,Result,ExecMainCode,ExecMainStatus -- a b c d`: one block per unit
# (systemd prints the properties in its own order, not the order asked).
SHOW = """Result=exit-code
ExecMainCode=1
ExecMainStatus=203
Id=backup.service

Result=signal
ExecMainCode=2
ExecMainStatus=9
Id=worker.service

Result=core-dump
ExecMainCode=3
ExecMainStatus=11
Id=crashy.service

Result=timeout
ExecMainCode=0
ExecMainStatus=0
Id=slow.service

Result=success
ExecMainCode=1
ExecMainStatus=0
Id=fine.service
"""


def test_systemctl_show_says_why_units_failed() -> None:
    assert parse_systemctl_show(SHOW) == {
        "backup.service": "exit-code, status 203",
        "worker.service": "signal, SIGKILL",
        "crashy.service": "core-dump, SIGSEGV (core dumped)",
        "slow.service": "timeout",
        "fine.service": "",
    }
    assert parse_systemctl_show("Id=x.service\r\nResult=exit-code\r\nExecMainCode=1\r\nExecMainStatus=oops\r\n") == {
        "x.service": "exit-code"
    }


@given(st.text(max_size=400))
def test_systemctl_show_never_raises(text: str) -> None:
    out = parse_systemctl_show(text)
    assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in out.items())


@given(st.text(max_size=300))
def test_service_text_parsers_never_raise(text: str) -> None:
    parse_systemctl_plain(text)
    parse_launchctl_list(text)
    parse_w32tm_status(text)
    parse_ntpq_peers_safe(text)


def parse_ntpq_peers_safe(text: str) -> None:
    with contextlib.suppress(ValueError):  # a selected row with a non-numeric offset
        parse_ntpq_peers(text)


def test_w32tm_english_synced_and_german_unsynced() -> None:
    synced, source, detail = parse_w32tm_status((FIXTURES / "clock" / "w32tm_status_en.txt").read_text())
    assert synced and source == "DC01.corp.example.com" and "Stratum: 4" in detail
    synced, source, _detail = parse_w32tm_status(
        (FIXTURES / "clock" / "w32tm_status_de_unsynced.txt").read_text(encoding="utf-8")
    )
    assert not synced and source == "Local CMOS Clock"


def test_chrony_ntpq_and_timedatectl() -> None:
    tracking = (
        "A9FEA97B,169.254.169.123,4,1795428001.123,-0.000012345,0.000001,0.000020,"
        "-7.5,0.001,0.02,0.0001,0.0002,64.1,Normal\n"
    )
    synced, offset, ref = parse_chrony_tracking(tracking)
    assert synced and offset == pytest.approx(-0.012345) and ref == "169.254.169.123"
    unsynced, _o, _r = parse_chrony_tracking("7F7F0101,,0,0,0.0,0,0,0,0,0,0,0,0,Not synchronised\n")
    assert not unsynced
    with pytest.raises(ValueError):
        parse_chrony_tracking("506 Cannot talk to daemon\n")
    peers = (
        "     remote           refid      st t when poll reach   delay   offset  jitter\n"
        "==============================================================================\n"
        "+192.0.2.10      .GPS.            1 u   33   64  377    0.412   -0.101   0.031\n"
        "*192.0.2.11      .PPS.            1 u   12   64  377    0.388    1.250   0.022\n"
    )
    assert parse_ntpq_peers(peers) == (True, 1.25, "192.0.2.11")
    assert parse_ntpq_peers("no peers\n") == (False, 0.0, "")
    props = parse_timedatectl_show("Timezone=Europe/Berlin\nNTP=yes\nNTPSynchronized=no\nbad line\n")
    assert props == {"Timezone": "Europe/Berlin", "NTP": "yes", "NTPSynchronized": "no"}


def test_services_and_clock_run_here() -> None:
    spec = CollectionSpec()
    with run_collection(spec, collectors=[ServicesCollector, ClockCollector]) as result:
        assert [s.state for s in result.statuses] == [OK, OK], result.statuses
        services, clock = result.snapshot.services, result.snapshot.clock
    if os.path.isdir("/run/systemd/system"):
        assert services.manager == "systemd" and services.total > 0
    else:
        assert "unsupported" in services.unsupported_reason
    assert clock.timezone
    # Linux always knows: a daemon's tool answers, or the kernel (adjtimex) does.
    assert clock.sync_known and clock.detail, clock


def test_kernel_clock_agrees_with_the_kernel() -> None:
    """adjtimex read-only: the same unsynchronised flag timedatectl reports, and an error bound."""
    synced, max_error_ms = kernel_clock()
    assert max_error_ms >= 0.0
    if shutil.which("timedatectl") is None:
        return
    text = subprocess.run(["timedatectl", "show"], capture_output=True, text=True, check=False).stdout
    if "NTPSynchronized=" in text:
        assert synced == ("NTPSynchronized=yes" in text)


def test_time_series_samples_the_window() -> None:
    spec = CollectionSpec(options={"timeseries_interval_s": 0.1, "timeseries_duration_s": 0.5})
    with run_collection(spec, collectors=[TimeseriesCollector]) as result:
        assert result.statuses[0].state == OK, result.statuses[0].error
        series = result.snapshot.timeseries
    assert series.interval_s == pytest.approx(0.1)
    assert len(series.samples) == 5
    stamps = [s.at.ToNanoseconds() for s in series.samples]
    assert stamps == sorted(stamps)
    for s in series.samples:
        assert 0 <= s.cpu_percent <= 100 and 0 <= s.cpu_system_percent <= s.cpu_percent + 1e-6
        assert 0 <= s.cpu_iowait_percent <= 100 and 0 < s.mem_percent <= 100


def test_time_series_fits_its_budget() -> None:
    spec = CollectionSpec(
        options={"timeseries_interval_s": 0.1, "timeseries_duration_s": 30.0},
        budgets={"timeseries": 0.8},
    )
    with run_collection(spec, collectors=[TimeseriesCollector]) as result:
        assert result.statuses[0].state == OK
        assert 1 <= len(result.snapshot.timeseries.samples) <= 6
        assert any("shortened" in w for _c, w in result.warnings)


class _Busy(Collector):
    """A collector that takes a known time, so the time series has a window to cover."""

    name = "busy"
    description = "takes 0.6 s"
    budget_s = 3.0

    def collect(self, ctx: CollectContext) -> None:
        time.sleep(0.6)


def test_time_series_covers_the_collection_window() -> None:
    spec = CollectionSpec(options={"timeseries_interval_s": 0.1})
    started = time.time()
    with run_collection(spec, collectors=[_Busy, TimeseriesCollector]) as result:
        assert [s.state for s in result.statuses] == [OK, OK], result.statuses
        series = result.snapshot.timeseries
        busy, ts = result.statuses
    # Sampled while the other one ran, and stopped when it was done (not at a fixed length).
    assert 5 <= len(series.samples) <= 8, len(series.samples)
    assert ts.duration_ms == pytest.approx(busy.duration_ms, abs=120)
    last = series.samples[-1].at.ToNanoseconds() / 1e9
    assert last == pytest.approx(started + 0.6, abs=0.25)


def test_time_series_alone_takes_its_minimum_samples() -> None:
    spec = CollectionSpec(options={"timeseries_interval_s": 0.1, "timeseries_min_samples": 3})
    with run_collection(spec, collectors=[TimeseriesCollector]) as result:
        assert result.statuses[0].state == OK
        samples = result.snapshot.timeseries.samples
        assert len(samples) == 3
        assert 250 <= result.statuses[0].duration_ms <= 600
    gaps = [(b.at.ToNanoseconds() - a.at.ToNanoseconds()) / 1e9 for a, b in itertools.pairwise(samples)]
    assert all(g >= 0.08 for g in gaps), gaps  # evenly spaced, not taken back to back


def test_a_time_series_with_no_sample_does_not_claim_the_agents_share() -> None:
    """A budget shorter than one interval leaves no sample: nothing to read the agent's share from."""
    with run_collection(CollectionSpec(only=("timeseries",), budgets={"timeseries": 0.4})) as result:
        series = result.snapshot.timeseries
    assert not series.samples and not series.agent_cpu_known


class _ChronyLeftKernel:
    """libc whose adjtimex answers as chronyd leaves the kernel without ``rtcsync``: STA_UNSYNC
    set (it keeps the kernel's 11-minute RTC mode off) and TIME_ERROR returned, while the
    maximum error is a real 50 ms bound. This machine has no NTP daemon to make it so."""

    def adjtimex(self, ref: object) -> int:
        tx = ctypes.cast(ref, ctypes.POINTER(clock_module._Timex)).contents  # type: ignore[arg-type]
        assert tx.modes == 0  # a read, never a change
        tx.status, tx.maxerror = 0x0040, 50_000
        return 5


def test_kernel_clock_judges_sync_as_systemd_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: _ChronyLeftKernel())
    assert clock_module.kernel_clock() == (True, 50.0)


def test_agent_cpu_does_not_drop_when_a_child_is_reaped_mid_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child reaped between reading our totals and walking /proc would be in neither reading.

    The race is made to happen every time: os.times() reports the child reaped from its
    second call on, and /proc no longer lists it from then.
    """
    real, calls = os.times(), itertools.count(1)
    reaped = False

    def times() -> os.times_result:
        nonlocal reaped
        children = (0.5, 0.5) if reaped else (0.0, 0.0)
        if next(calls) == 2:
            reaped = True  # another thread's wait() lands right after this reading
        return os.times_result((real.user, real.system, *children, real.elapsed))

    monkeypatch.setattr(os, "times", times)
    monkeypatch.setattr(timeseries_module, "_proc_children", lambda pid: [] if reaped or pid != os.getpid() else [4242])
    monkeypatch.setattr(timeseries_module, "_proc_times", lambda pid: (1.0, 0.5))
    agent = timeseries_module.AgentCpu()
    agent._proc = True
    readings = [agent.read()[0] for _ in range(3)]
    assert readings == sorted(readings), readings
