"""Headless Chromium opens the HTML report of a real bundle: no console errors, findings and charts in the DOM.

Needs Debian's ``chromium`` (``.ci/run`` installs it). When it is missing the test tries
``apt-get install -y chromium`` as root, and skips with the reason if that fails.
The phone-sized screenshot is kept under the test's tmp_path; its path is printed.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.analysis import BundleView, analyse, render_html
from agent.keys import SigningKey
from tests.fixtures.analysis.crafted import COLLECTED, generate_logs, healthy_snapshot, write_bundle

CHROMIUM = "/usr/bin/chromium"
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def _chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} missing and not root to install it (apt-get install chromium)")
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if done.returncode != 0 or not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium not installable: {(done.stderr or done.stdout).strip()[-300:]}")
    return CHROMIUM


def _run(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [browser, *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120,
    )


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    s = healthy_snapshot()
    s.disks.partitions[1].percent = 96.5
    f = s.fragmentation.filesystems[0]
    f.pct_files_fragmented, f.pct_bytes_in_fragmented, f.fragments_p95 = 35.0, 55.0, 60.0
    f.histogram.update({"1": 1300, "2-3": 400, "4-9": 200, "10-99": 90, "100+": 10})
    s.services.failed.add(name="postgresql@15-main.service", state="failed", sub_state="failed", result="exit-code")
    logs = generate_logs(burst_at=COLLECTED - dt.timedelta(hours=2, minutes=5))
    bundle = write_bundle(tmp_path / "bundle", SigningKey.generate(), s, logs)
    report = tmp_path / "report.html"
    report.write_text(render_html(analyse(BundleView.from_file(bundle))), encoding="utf-8")
    url = report.as_uri()

    dom = _run(browser, tmp_path / "profile-dom", "--enable-logging=stderr", "--v=0", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console_errors = [
        line for line in dom.stderr.splitlines()
        if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line or "Refused" in line)
    ]
    assert console_errors == []
    assert 'id="findings"' in dom.stdout and "disk-full" in dom.stdout
    assert dom.stdout.count("<svg") >= 5
    assert "onset" in dom.stdout

    shot = tmp_path / "report.png"
    taken = _run(browser, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=412,915",
                 "--hide-scrollbars", url)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"\nreport screenshot (412x915, phone): {shot}\nreport html: {report}")


# Measures, in the browser's own layout, every text of every chart against its frame,
# and writes what sticks out into the page for --dump-dom to carry back.
_MEASURE = """
<script>
addEventListener("load", () => {
  const out = [];
  document.querySelectorAll("svg.chart").forEach((svg, i) => {
    const frame = svg.getBoundingClientRect();
    svg.querySelectorAll("text").forEach((t) => {
      const b = t.getBoundingClientRect();
      if (b.left < frame.left - 0.5 || b.right > frame.right + 0.5 || b.top < frame.top - 0.5 ||
          b.bottom > frame.bottom + 0.5) {
        out.push(i + ": " + t.textContent);
      }
    });
  });
  const p = document.createElement("pre");
  p.id = "clipped";
  p.textContent = JSON.stringify(out);
  document.body.appendChild(p);
});
</script>
"""


@pytest.mark.parametrize("width", [412, 1280])
def test_chart_labels_and_axis_titles_are_inside_their_frames(tmp_path: Path, width: int) -> None:
    import json
    import re

    browser = _chromium()
    s = healthy_snapshot()
    f = s.fragmentation.filesystems[0]
    f.histogram.update({"1": 1300, "2-3": 400, "4-9": 200, "10-99": 90, "100+": 10})
    for sample in s.timeseries.samples:  # large byte rates: the longest y labels
        sample.disk_read_bps = 1_512_000_000
    logs = generate_logs(burst_at=COLLECTED - dt.timedelta(minutes=7))  # the onset label at the right edge
    bundle = write_bundle(tmp_path / "bundle", SigningKey.generate(), s, logs)
    html = render_html(analyse(BundleView.from_file(bundle)))
    style = re.search(r"<style>.*?</style>", html, re.S)
    charts = re.findall(r"<svg class=\"chart\".*?</svg>", html, re.S)
    assert style and len(charts) >= 5
    for chart in charts:  # every chart says what its axes count
        titles = re.findall(r'<text transform="rotate\(-90\)"[^>]*>([^<]+)</text>', chart)
        assert titles and titles[0].strip(), chart[:200]
    page = tmp_path / "charts.html"
    body = "".join(charts) + _MEASURE
    page.write_text(f"<!doctype html><html><head>{style.group(0)}</head><body>{body}</body></html>")
    dom = _run(browser, tmp_path / "profile", f"--window-size={width},900", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="clipped">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-500:]
    assert json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")) == []
