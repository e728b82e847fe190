"""Diff reports exactly the changes made between two crafted bundles of one host."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.analysis import BundleView, DifferentHostsError, diff_bundles, render_diff_text
from agent.analysis.diff import Change
from agent.cli import app
from agent.keys import SigningKey
from tests.fixtures.analysis.crafted import healthy_snapshot, write_bundle


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    key = SigningKey.generate()
    a = healthy_snapshot()
    b = healthy_snapshot()
    b.host.kernel = "6.1.0-20-amd64"
    b.disks.partitions[1].percent = 98.0                      # /var fills up → also a new finding
    b.disks.partitions.add(mountpoint="/data", device="/dev/sdb1", fstype="xfs", total=10**12, percent=1.0)
    b.fragmentation.filesystems[0].pct_files_fragmented = 12.5
    del b.network_depth.listening[0]                          # sshd stopped listening
    b.network_depth.listening.add(protocol="tcp", address="0.0.0.0", port=8080, process="java")
    b.services.failed.add(name="nginx.service", state="failed", sub_state="failed", result="exit-code")
    b.network.interfaces[0].addresses[0].address = "10.0.0.9"
    b.processes.top_cpu.add(pid=4000, name="java", cpu_percent=50.0)
    return write_bundle(tmp_path / "a", key, a), write_bundle(tmp_path / "b", key, b)


def test_diff_reports_exactly_the_changes(pair: tuple[Path, Path]) -> None:
    d = diff_bundles(BundleView.from_file(pair[0]), BundleView.from_file(pair[1]))
    got = {s.name: (s.added, s.removed, s.changed) for s in d.sections if not s.empty}
    assert got == {
        "os": ((), (), (Change("host", "kernel", "6.1.0-18-amd64", "6.1.0-20-amd64"),)),
        "filesystems": (("/data",), (), (Change("/var", "used_pct", 63.0, 98.0),)),
        "fragmentation": ((), (), (Change("/var", "pct_files_fragmented", 0.7, 12.5),)),
        "listening_ports": (("tcp 0.0.0.0:8080",), ("tcp 0.0.0.0:22",), ()),
        "failed_services": (("nginx.service",), (), ()),
        "interfaces": ((), (), (Change("eth0", "addresses", "10.0.0.5", "10.0.0.9"),)),
        "top_processes": (("java",), (), ()),
        "findings": (("disk-full:/var:space", "services-failed"), (), ()),
    }
    text = render_diff_text(d)
    assert "  + now failed: nginx.service" in text
    assert "  ~ /var used_pct: 63.0 -> 98.0" in text
    assert "  + new: disk-full:/var:space" in text


def test_same_bundle_has_no_differences(pair: tuple[Path, Path]) -> None:
    view = BundleView.from_file(pair[0])
    d = diff_bundles(view, view)
    assert d.empty
    assert "no differences" in render_diff_text(d)


def test_different_hosts_refused_unless_forced(tmp_path: Path) -> None:
    key = SigningKey.generate()
    a = write_bundle(tmp_path / "a", key, healthy_snapshot("db-1"))
    b = write_bundle(tmp_path / "b", key, healthy_snapshot("web-7"))
    with pytest.raises(DifferentHostsError, match="different hosts"):
        diff_bundles(BundleView.from_file(a), BundleView.from_file(b))
    assert diff_bundles(BundleView.from_file(a), BundleView.from_file(b), force=True).host_b == "web-7"
    result = CliRunner().invoke(app, ["diff", str(a), str(b)])
    assert isinstance(result.exception, DifferentHostsError)  # main() maps it to exit 4 with one line
    forced = CliRunner().invoke(app, ["diff", str(a), str(b), "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    assert '"host": "web-7"' in forced.output
