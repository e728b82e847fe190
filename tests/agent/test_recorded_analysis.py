"""The recorded history in the analysis: metric onsets on the timeline, rules over what lasted.

A real recorder database (a replayed series, time compressed through the recorder's
clock), a real bundle collected from it, the real analysis of that bundle.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from agent.analysis import BundleView, analyse, render_html
from agent.analysis.report_text import print_report
from agent.bundle import verify_bundle
from agent.collect import CollectionSpec
from agent.daemon.recorder import Recorder, RecorderSettings
from agent.keys import SigningKey
from agent.oneshot import collect_bundle

GIB = 1024**3
STEP_S = 60.0


class _Clock:
    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def _history(home: Path) -> dict[str, float]:
    """Three days at one sample a minute, ending now: memory flat at 2 GiB for a day, then
    climbing to 20 GiB; CPU at 10 % until 20 minutes ago, then 95 %."""
    now = time.time()
    n = int(3 * 86400 / STEP_S)
    start = now - (n - 1) * STEP_S
    climb = 1440  # the sample where memory starts to climb
    hot = n - 20
    clock = _Clock(start)
    settings = RecorderSettings(interval_s=STEP_S, fine_s=3600, retention_s=8 * 86400)
    rec = Recorder(home, settings, now=clock)
    for i in range(n):
        used = 2 * GIB * (1 + 9 * max(0, i - climb) / (n - 1 - climb))
        busy = 95.0 if i >= hot else 10.0
        metrics: dict[str, Any] = {
            "cpu.user_pct": busy * 0.8, "cpu.system_pct": busy * 0.2, "cpu.iowait_pct": 0.0, "cpu.steal_pct": 0.0,
            "mem.used_bytes": used, "mem.total_bytes": 32 * GIB, "swap.used_bytes": 0, "swap.total_bytes": 0,
            "top_cpu": [["cfworker", busy]], "top_rss": [["cfworker", int(used * 0.8)]],
        }
        rec.record(metrics)
        clock.t += STEP_S
    rec.close()
    return {"climb": start + climb * STEP_S, "hot": start + hot * STEP_S, "end": start + (n - 1) * STEP_S}


def test_metric_onsets_join_the_timeline_and_rules_judge_what_lasted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    when = _history(home)
    spec = CollectionSpec(
        only=("host", "recorder"), options={"recorder_home": str(home), "recorder_since_s": 3 * 86400.0 + 600}
    )
    done = collect_bundle(key=SigningKey.generate(), output_dir=tmp_path / "out", spec=spec)
    view = BundleView.from_file(done.bundle.path)
    # The fine hour stays at one a minute here, the rest thinned to one a minute: all kept.
    assert len(view.snapshot.recorded_history.at_unix) == int(3 * 86400 / STEP_S)
    a = analyse(view)
    onsets = {o.metric: o for o in a.timeline.metric_onsets}
    mem, cpu = onsets["memory used"], onsets["CPU busy %"]
    assert mem.kind == "rise" and abs(mem.at_unix - when["climb"]) <= STEP_S
    assert mem.describe() == "memory used rose 10.0-fold over 2 d 0 h (from 2.0 GiB to 20.0 GiB)"
    assert cpu.kind == "step" and abs(cpu.at_unix - when["hot"]) <= STEP_S
    assert "Recorded metrics: " in a.timeline.summary and "memory used rose 10.0-fold" in a.timeline.summary
    codes = {f.code: f for f in a.findings.findings}
    growth, hot = codes["recorded-growth"], codes["recorded-cpu-saturation"]
    assert growth.severity == "critical" and "10.0 times as much" in growth.explanation
    assert hot.severity == "warning" and hot.title == "CPU ≥ 90% busy for 20 min (recorded)"
    assert "cpu-saturation" not in codes  # the collection's own sample is not the recorded one
    # The sealed findings.json carries the onsets beside the log onset.
    sealed = json.loads(verify_bundle(done.bundle.path, keep=("findings.json",)).kept["findings.json"])
    assert [m["kind"] for m in sealed["timeline"]["metric_onsets"]] == ["step", "rise"]
    assert "onset" in sealed["timeline"]
    # The report draws the three days, dated on the axis, marked where each change began.
    page = render_html(a)
    section = page[page.index('id="recorded"') : page.index("</section>", page.index('id="recorded"'))]
    assert section.count('class="onset"') == 4  # two onsets on each of the two charts
    assert f"memory rise {time.strftime('%m-%d %H:%M', time.gmtime(mem.at_unix))} UTC" in section
    assert f"CPU step {time.strftime('%m-%d %H:%M', time.gmtime(cpu.at_unix))} UTC" in section
    assert time.strftime("%m-%d", time.gmtime(when["climb"] - 86400)) in section
    # The console draws the same three days, with a caret under each change.
    console = Console(record=True, width=120)
    print_report(a, console)
    text = console.export_text()
    lines = text[text.index("Recorded before the collection: 4320 samples") :].splitlines()
    cpu_bar, mem_bar, carets, legend = lines[1], lines[2], lines[3], "\n".join(lines[4:6])
    assert cpu_bar.startswith("    CPU % |▁") and cpu_bar.endswith("█| max 95")
    assert mem_bar.startswith(" memory % |▁") and "▅" in mem_bar and "max 62" in mem_bar
    assert carets.count("^") == 2 and carets.index("^") == 11 + 20  # a third of 60 columns: the climb
    assert "memory used rose 10.0-fold" in legend and "CPU busy % rose from 10 % to 95 %" in legend


def test_one_busy_sample_is_no_saturation(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    clock = _Clock(time.time() - 3600)
    rec = Recorder(home, RecorderSettings(interval_s=10), now=clock)
    for i in range(360):
        busy = 99.0 if i in (100, 200, 300) else 20.0
        rec.record({"cpu.user_pct": busy, "cpu.system_pct": 0.0, "mem.used_bytes": GIB, "mem.total_bytes": 8 * GIB})
        clock.t += 10
    rec.close()
    spec = CollectionSpec(only=("host", "recorder"), options={"recorder_home": str(home), "recorder_since_s": 7200.0})
    done = collect_bundle(key=SigningKey.generate(), output_dir=tmp_path / "out", spec=spec)
    a = analyse(BundleView.from_file(done.bundle.path))
    assert not [f for f in a.findings.findings if f.code.startswith("recorded-")]
    assert a.timeline.metric_onsets == ()
