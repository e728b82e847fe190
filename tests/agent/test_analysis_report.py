"""Reports and CLI: facts-only, with logs, empty facts; hostile text is escaped; exit codes."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from agent.analysis import BundleView, analyse, render_html, seal_outputs
from agent.analysis.report_text import print_report
from agent.cli import app
from agent.keys import SigningKey
from protos import facts_pb2
from tests.fixtures.analysis.crafted import COLLECTED, generate_logs, healthy_snapshot, write_bundle

runner = CliRunner()


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def _checks(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>")
    assert '<meta name="viewport"' in html
    assert 'id="findings"' in html
    assert not re.search(r"<[a-zA-Z][^<>]*\s(?:src|href)\s*=", html), "no external asset, no link"
    assert "<script" not in html


@pytest.mark.parametrize("kind", ["facts-only", "with-logs", "empty-facts"])
def test_html_and_text_report_on_each_kind_of_bundle(tmp_path: Path, key: SigningKey, kind: str) -> None:
    snapshot = facts_pb2.Snapshot(bundle_id="0" * 32) if kind == "empty-facts" else healthy_snapshot()
    logs = generate_logs(burst_at=COLLECTED - dt.timedelta(hours=2)) if kind == "with-logs" else None
    path = write_bundle(tmp_path, key, snapshot, logs)
    a = analyse(BundleView.from_file(path))
    html = render_html(a)
    _checks(html)
    assert html.count("<svg") == {"facts-only": 4, "with-logs": 5, "empty-facts": 0}[kind]
    console = Console(width=100, record=True, file=io.StringIO())
    print_report(a, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    if kind == "with-logs":
        assert "onset" in html and "errors began" in text


def test_the_agents_own_share_is_charted_and_its_processes_labelled(tmp_path: Path, key: SigningKey) -> None:
    snapshot = healthy_snapshot()
    assert "Casefile itself" not in render_html(analyse(BundleView.from_file(write_bundle(tmp_path, key, snapshot))))
    snapshot.timeseries.agent_cpu_known = True
    for x in snapshot.timeseries.samples:
        x.agent_cpu_percent = 30.0
    snapshot.processes.top_cpu[0].agent = True
    (tmp_path / "again").mkdir()
    html = render_html(analyse(BundleView.from_file(write_bundle(tmp_path / "again", key, snapshot))))
    assert "Casefile itself" in html
    assert f"{snapshot.processes.top_cpu[0].name} (Casefile, collecting)" in html


def test_hostile_facts_are_escaped(tmp_path: Path, key: SigningKey) -> None:
    s = healthy_snapshot()
    evil = '<script>alert("x")</script><img src=//evil.example/x>'
    s.host.os_release = evil
    s.services.failed.add(name=evil, state="failed")
    s.disks.partitions[0].mountpoint = evil
    s.disks.partitions[0].percent = 99.0
    line = {"ts": "2026-11-22T15:00:00Z", "src": evil, "sev": "err", "msg": "Out of memory: Killed " + evil}
    logs = {"kernel": [line]}
    html = render_html(analyse(BundleView.from_file(write_bundle(tmp_path, key, s, logs))))
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    _checks(html)


def test_seal_outputs(key: SigningKey) -> None:
    s = healthy_snapshot()
    s.disks.partitions[1].percent = 92.0
    out = seal_outputs(BundleView.from_snapshot(s, generate_logs(hours=1)["syslog"]))
    assert set(out) == {"findings.json", "report.html"}
    doc = json.loads(out["findings.json"])
    assert doc["worst"] == "warning" and doc["exit_code"] == 10
    assert doc["findings"][0]["code"] == "disk-full"
    _checks(out["report.html"].decode())


def test_findings_cli_exit_codes_and_json(tmp_path: Path, key: SigningKey) -> None:
    healthy = write_bundle(tmp_path / "h", key, healthy_snapshot())
    bad = healthy_snapshot()
    bad.network_depth.resolve.ok = False
    sick = write_bundle(tmp_path / "s", key, bad)
    warn = healthy_snapshot()
    warn.clock.synchronized = False
    warned = write_bundle(tmp_path / "w", key, warn)
    assert runner.invoke(app, ["findings", str(healthy)]).exit_code == 0
    assert runner.invoke(app, ["findings", str(warned)]).exit_code == 10
    result = runner.invoke(app, ["findings", str(sick), "--json"])
    assert result.exit_code == 20
    assert json.loads(result.output)["findings"][0]["code"] == "dns-failure"
    assert json.loads(result.output)["casefile_version"] == "0.1.0"  # every --json answer names it


def test_timeline_and_report_cli(tmp_path: Path, key: SigningKey) -> None:
    path = write_bundle(tmp_path, key, healthy_snapshot(), generate_logs(burst_at=COLLECTED - dt.timedelta(hours=5)))
    t = runner.invoke(app, ["timeline", str(path), "--json", "--interval", "10m"])
    assert t.exit_code == 0, t.output
    doc = json.loads(t.output)
    assert doc["interval_s"] == 600 and doc["onset"]["began_at"].startswith("2026-11-22T11:0")
    assert doc["casefile_version"] == "0.1.0"
    html = tmp_path / "r.html"
    r = runner.invoke(app, ["report", str(path), "--html", str(html)])
    assert r.exit_code == 10, r.output  # the burst is a warning
    assert "Findings" in r.output and html.read_text().count("<svg") == 5
    bad = runner.invoke(app, ["timeline", str(path), "--interval", "7s"])
    assert bad.exit_code != 0


def test_report_without_bundle_collects_fresh(tmp_path: Path) -> None:
    r = runner.invoke(app, ["report", "--home", str(tmp_path / "home"), "-o", str(tmp_path / "out"), "--json"])
    assert r.exit_code in (0, 10, 20), r.output
    doc = json.loads(r.output)
    assert Path(doc["bundle"]).is_file() and Path(doc["html"]).read_text().startswith("<!DOCTYPE html>")


def test_services_the_bundle_cannot_judge_are_not_available_never_none(tmp_path: Path, key: SigningKey) -> None:
    def services_section(snapshot: facts_pb2.Snapshot, where: Path) -> str:
        html = render_html(analyse(BundleView.from_file(write_bundle(where, key, snapshot))))
        return html.split('<section id="services">', 1)[1].split("</section>", 1)[0]

    healthy = healthy_snapshot()
    assert "none" in services_section(healthy, tmp_path / "a")  # judged: nothing failed
    unsupported = healthy_snapshot()
    unsupported.services.unsupported_reason = "no service manager found (systemctl missing)"
    shown = services_section(unsupported, tmp_path / "b")
    assert "not available: no service manager found (systemctl missing)" in shown and ">none<" not in shown
    timed_out = healthy_snapshot()
    for c in timed_out.collectors:
        if c.name == "services":
            c.state, c.error = facts_pb2.CollectorStatus.TIMEOUT, "did not finish within its budget of 5 s"
            break
    else:
        timed_out.collectors.add(name="services", state=facts_pb2.CollectorStatus.TIMEOUT, error="budget 5 s")
    assert "not available: the services collector ended timeout" in services_section(timed_out, tmp_path / "c")
