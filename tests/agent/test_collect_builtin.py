"""The built-in collectors against this machine's real psutil, /proc and /sys."""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
import time

import pytest

from agent.collect import CollectionResult, CollectionSpec, run_collection, statuses_to_dicts
from agent.collect.builtin import (
    CpuCollector,
    DisksCollector,
    HostCollector,
    MemoryCollector,
    NetworkCollector,
)
from protos import facts_pb2

Status = facts_pb2.CollectorStatus


# The psutil basics; the deeper collectors have their own test modules.
BASICS = (HostCollector, CpuCollector, MemoryCollector, DisksCollector, NetworkCollector)


@pytest.fixture(scope="module")
def default_run() -> CollectionResult:
    return run_collection(CollectionSpec(), collectors=BASICS)


def test_all_builtins_ok(default_run: CollectionResult) -> None:
    states = {s.name: Status.State.Name(s.state) for s in default_run.statuses}
    errors = {s.name: s.error for s in default_run.statuses if s.error}
    assert states == dict.fromkeys(["host", "cpu", "memory", "disks", "network"], "OK"), errors
    assert list(default_run.snapshot.collectors) == list(default_run.statuses)
    assert default_run.selected == ("host", "cpu", "memory", "disks", "network")
    assert default_run.artifacts == ()


def test_host_facts(default_run: CollectionResult) -> None:
    host = default_run.snapshot.host
    assert host.hostname == socket.gethostname()
    assert host.os and host.kernel and host.arch and host.os_release
    assert host.python_version == ".".join(map(str, sys.version_info[:3]))
    boot = host.boot_time.ToNanoseconds() / 1e9
    assert 0 < boot < time.time()
    assert host.uptime_seconds > 0
    assert "(UTC" in host.timezone
    assert host.virtualized == bool(host.virtualization)


def test_cpu_facts(default_run: CollectionResult) -> None:
    cpu = default_run.snapshot.cpu
    assert cpu.logical_count >= 1
    assert len(cpu.per_core_percent) == cpu.logical_count
    assert all(0.0 <= p <= 100.0 for p in cpu.per_core_percent)
    assert 0.0 <= cpu.total_percent <= 100.0
    assert cpu.sample_seconds > 0
    t = cpu.times_percent
    assert 0.0 <= t.idle <= 100.0 and t.user >= 0.0
    if sys.platform.startswith("linux"):
        assert cpu.ctx_switches > 0 and cpu.interrupts > 0


def test_memory_facts(default_run: CollectionResult) -> None:
    mem = default_run.snapshot.memory
    assert mem.total > 0
    assert 0 < mem.available <= mem.total
    assert mem.used <= mem.total and mem.free <= mem.total
    assert 0.0 <= mem.percent <= 100.0
    assert mem.swap_used <= mem.swap_total


def test_disk_facts(default_run: CollectionResult) -> None:
    disks = default_run.snapshot.disks
    sized = [p for p in disks.partitions if p.total > 0]
    assert sized, list(disks.partitions)
    for p in sized:
        assert p.mountpoint and not p.error
        assert p.used <= p.total and p.free <= p.total
        assert 0.0 <= p.percent <= 100.0
        if sys.platform != "win32":
            assert p.inodes_used <= p.inodes_total
    assert len({d.name for d in disks.io}) == len(disks.io)


def test_network_facts(default_run: CollectionResult) -> None:
    nics = {n.name: n for n in default_run.snapshot.network.interfaces}
    loopbacks = [n for n in nics.values() if any(a.address == "127.0.0.1" for a in n.addresses)]
    assert loopbacks, sorted(nics)
    lo = loopbacks[0]
    assert lo.is_up and lo.mtu > 0
    for nic in nics.values():
        assert nic.duplex in ("full", "half", "unknown")
        for a in nic.addresses:
            assert a.family in ("ipv4", "ipv6")
            want = 4 if a.family == "ipv4" else 6
            # Link-local IPv6 addresses carry a scope id: fe80::1%eth0.
            assert ipaddress.ip_address(a.address.split("%")[0]).version == want
    assert lo.counters.packets_sent >= 0


def test_manifest_entries_are_json(default_run: CollectionResult) -> None:
    entries = default_run.status_dicts()
    assert json.loads(json.dumps(entries)) == entries
    assert [e["status"] for e in entries] == ["ok"] * 5
    assert all(isinstance(e["bytes"], int) and e["bytes"] > 0 for e in entries)
    plain = statuses_to_dicts(default_run.statuses)
    assert [e["name"] for e in plain] == [e["name"] for e in entries]
    assert json.loads(json.dumps(default_run.spec_dict()))["selected"] == list(default_run.selected)


def test_cpu_sample_option_is_used() -> None:
    spec = CollectionSpec(only=("cpu",), options={"cpu_sample_s": 0.05})
    result = run_collection(spec, collectors=BASICS)
    cpu = result.snapshot.cpu
    assert result.statuses[1].state == Status.OK
    assert cpu.sample_seconds >= 0.05
    assert result.warnings == ()


def test_bad_option_is_an_error_for_that_collector_only() -> None:
    spec = CollectionSpec(only=("cpu", "memory"), options={"cpu_sample_s": "slow"})
    result = run_collection(spec, collectors=BASICS)
    by_name = {s.name: s for s in result.statuses}
    assert by_name["cpu"].state == Status.ERROR
    assert "cpu_sample_s" in by_name["cpu"].error
    assert by_name["memory"].state == Status.OK
    assert not result.snapshot.HasField("cpu")


def test_mount_still_blocked_from_an_earlier_run_is_reported_not_probed_again() -> None:
    from agent.collect import Pending
    from agent.collect.builtin import disks

    first = run_collection(CollectionSpec(only=("disks",)), collectors=BASICS)
    mount = next(p.mountpoint for p in first.snapshot.disks.partitions if p.total > 0)
    # A probe that never answered in an earlier collection, as a dead NFS mount leaves.
    gate = threading.Event()
    stuck = Pending(lambda: gate.wait(60), name="test-stuck-probe")
    with disks._stuck_lock:
        disks._stuck[mount] = stuck  # type: ignore[assignment]
    try:
        second = run_collection(CollectionSpec(only=("disks",)), collectors=BASICS)
        assert second.statuses[3].state == Status.OK
        entry = next(p for p in second.snapshot.disks.partitions if p.mountpoint == mount)
        assert entry.error == "usage still blocked since an earlier collection"
        assert entry.total == 0
    finally:
        gate.set()
        stuck.result(60)
    third = run_collection(CollectionSpec(only=("disks",)), collectors=BASICS)
    entry = next(p for p in third.snapshot.disks.partitions if p.mountpoint == mount)
    assert entry.total > 0 and not entry.error
    assert mount not in disks._stuck
