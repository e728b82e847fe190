"""A triggered bundle with crash artefacts, shown by the collector: ``show`` (text and
``--json``), the console's bundle page and the HTML report name the trigger and what
fired it, and show the core dumps, core files, kernel crash lines and ``/var/crash``.

The bundle is a real collection through the path the daemon's collection child takes
(``collect_bundle`` with the options ``agent.daemon.execute`` sets for a trigger), with
coredumpctl answering from its recorded output (this machine has no systemd-coredump),
a core file store, a pstore folder and a crash folder holding a file whose name is HTML.
It is uploaded to a real collector on loopback with the enrolled agent's key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from markupsafe import escape

from agent.analysis import BundleView
from agent.bundle.reader import verify_bundle
from agent.collect import CollectionSpec
from agent.collect_request import trigger_options
from agent.keys import SigningKey
from agent.oneshot import collect_bundle
from agent.scopes import collectors_for
from agent.transport import UploadTarget, enroll, upload_bundle
from tests.agent.test_crashes import _fake_coredumpctl
from tests.e2e.test_cli import cli
from tests.web.conftest import Console

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="Linux collectors")

HOSTILE_CRASH = "<img src=x onerror=alert(1)>.crash"
DETAIL = "filesystem /srv/<b>data</b> used 97 % >= 95 % for 60 s (at least 60 s)"
FIRED_AT = 1_796_000_000.5
CORE = "core.nginx.998.0123456789abcdef0123456789abcdef.48121.1733563004123456.zst"
PANIC = "[  812.004211] Kernel panic - not syncing: Fatal exception in interrupt"


@pytest.fixture(scope="module")
def triggered(console: Console, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("triggered")
    _fake_coredumpctl(tmp / "bin")
    crash = tmp / "crash"
    crash.mkdir()
    (crash / HOSTILE_CRASH).write_bytes(b"ProblemType: Crash\n")
    pstore = tmp / "pstore"
    pstore.mkdir()
    (pstore / "dmesg-efi-173356300401001").write_text(f"Oops: 0000 [#1] SMP\n{PANIC}\n")
    store = tmp / "coredump"
    store.mkdir()
    (store / CORE).write_bytes(b"\x28\xb5\x2f\xfd" + b"core" * 256)
    options = {
        **trigger_options("disk-full", {"when": "disk", "detail": DETAIL, "at": FIRED_AT}),
        "crash_dir": str(crash), "pstore_dir": str(pstore), "coredump_dir": str(store), "coredump_files": True,
    }
    key = SigningKey.generate()
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{tmp / 'bin'}{os.pathsep}{old_path}"
    try:
        with console.collector.channel() as ch:
            agent_id = enroll(ch, token=console.collector.enroll_token(), key=key, hostname="app-7",
                              agent_version="t").agent_id
        done = collect_bundle(
            key=key, output_dir=tmp / "out", agent_id=agent_id, kind="triggered",
            spec=CollectionSpec(only=collectors_for(("facts", "crashes")), options=options),
        )
    finally:
        os.environ["PATH"] = old_path
    with console.collector.channel() as ch:
        upload_bundle(ch, done.bundle.path, bundle_id=done.bundle.bundle_id,
                      target=UploadTarget(key=key, agent_id=agent_id))
    view = BundleView.from_file(done.bundle.path)
    assert view.snapshot.kind == "triggered" and view.snapshot.trigger.name == "disk-full"
    # The report the agent sealed into the bundle says it too (the on-site technician's copy).
    sealed = verify_bundle(done.bundle.path, keep=("report.html",)).kept["report.html"].decode("utf-8")
    assert 'id="trigger"' in sealed and str(escape(DETAIL)) in sealed
    _crashes_shown(sealed)
    yield done.bundle.bundle_id


def _env(console: Console) -> dict[str, str]:
    return {"CASEFILE_COLLECTOR": console.collector.address, "CASEFILE_TOKEN": console.tokens["viewer"],
            "CASEFILE_CA_FINGERPRINT": console.collector.fingerprint, "COLUMNS": "250"}


def test_show_names_the_trigger_and_what_fired_it(console: Console, triggered: str) -> None:
    text = cli("casefile-collector", "show", triggered, env=_env(console)).stdout
    line = next(x for x in text.splitlines() if x.startswith("triggered by"))
    assert line == f"triggered by disk-full (disk) at 2026-11-30 00:53:20 UTC: {DETAIL}", line
    shown = json.loads(cli("casefile-collector", "show", triggered, "--json", env=_env(console)).stdout)
    assert shown["summary"]["kind"] == "triggered"
    assert shown["facts"]["trigger"] == {
        "name": "disk-full", "when": "disk", "detail": DETAIL, "firedAt": "2026-11-30T00:53:20.500Z",
    }
    assert json.loads(shown["manifestJson"])["spec"]["options"]["trigger"] == "disk-full"


def test_the_bundle_page_shows_the_trigger_and_the_crash_artefacts(console: Console, triggered: str) -> None:
    web = console.client()
    web.sign_in(console.tokens["viewer"])
    page = web.get(f"/bundles/{triggered}")
    assert page.status == 200
    body = page.body
    trigger_at, findings_at, crashes_at, facts_at = (
        body.index(f'id="{s}"') for s in ("trigger", "findings", "crashes", "facts")
    )
    assert trigger_at < findings_at < crashes_at < facts_at  # what fired it first
    assert "disk-full" in body and str(escape(DETAIL)) in body and DETAIL not in body
    assert "2026-11-30 00:53:20 UTC" in body
    _crashes_shown(body)
    assert 'id="recorded"' in body  # the flight recorder's section (none on this machine: said)


def test_the_html_report_shows_the_trigger_and_the_crash_artefacts(console: Console, triggered: str) -> None:
    web = console.client()
    web.sign_in(console.tokens["viewer"])
    report = web.get(f"/bundles/{triggered}/report")
    assert report.status == 200
    assert 'id="trigger"' in report.body and "disk-full" in report.body and str(escape(DETAIL)) in report.body
    _crashes_shown(report.body)


def _crashes_shown(body: str) -> None:
    section = body[body.index('id="crashes"'):]
    section = section[: section.index("</section>")]
    # coredumpctl's entries with the newest one's command line and first frame.
    assert "/usr/sbin/nginx" in section and "SIGSEGV" in section and "nginx: worker process" in section
    assert "ngx_http_upstream_process_header" in section and "/opt/app/bin/worker" in section
    # The core file the owner allowed, in the bundle.
    assert CORE in section and f"yes, as cores/{CORE}" in section
    # The kernel's pstore file and its panic line.
    assert "dmesg-efi-173356300401001" in section and PANIC in section
    # /var/crash, its hostile file name escaped.
    assert HOSTILE_CRASH not in section and str(escape(HOSTILE_CRASH)) in section


def test_a_bundle_without_the_crashes_scope_says_so(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["viewer"])
    page = web.get(f"/bundles/{console.bundles['after']}")
    assert 'id="trigger"' not in page.body
    section = page.body[page.body.index('id="crashes"'):]
    assert "Not collected in this bundle" in section[: section.index("</section>")]
