"""Rules over the flight recorder's history in the bundle: what lasted, not one sample.

The collection window is a second or two; the recorder saw hours or days before it
(``RecordedHistory``). A CPU busy for one sample is noise; busy for ten minutes on end is
saturation. Memory that climbed tenfold over three days is a leak or a runaway cache even
while there is still room.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.analysis.metric_onset import longest_run, metric_onsets, recorded_series
from agent.analysis.model import Evidence, Finding, Severity, format_utc
from agent.analysis.rule import Rule
from agent.analysis.timeline import format_duration

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = ["RecordedCpuSaturation", "RecordedGrowth"]


class RecordedCpuSaturation(Rule):
    code = "recorded-cpu-saturation"
    title = "CPU saturated for a long stretch (recorded)"
    description = "The flight recorder saw the CPUs nearly fully busy for many minutes on end before the collection."
    options = MappingProxyType({"busy_pct": 90.0, "warn_s": 600.0, "crit_s": 3600.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        h = view.snapshot.recorded_history
        points = recorded_series(h, "cpu")
        if not points:
            return
        times = [p[0] for p in points]
        index = {at: i for i, at in enumerate(h.at_unix)}
        res = [h.resolution_s[index[at]] if index[at] < len(h.resolution_s) else 0.0 for at in times]
        run = longest_run(times, [p[1] for p in points], self.opt("busy_pct"), res)
        if run is None or run.seconds < self.opt("warn_s"):
            return
        severity: Severity = "critical" if run.seconds >= self.opt("crit_s") else "warning"
        start, end = format_utc(run.start, seconds=False) or "", format_utc(run.end, seconds=False) or ""
        yield self.finding(
            severity,
            f"CPU ≥ {self.opt('busy_pct'):.0f}% busy for {format_duration(run.seconds)} (recorded)",
            f"The flight recorder saw the CPUs at least {self.opt('busy_pct'):.0f}% busy from {start} to {end} "
            f"without a break (peak {run.peak:.0f}%): sustained saturation, not a passing spike. Work queued "
            "up for that long.",
            [Evidence("recorded_history.cpu_busy_pct (run start)", start),
             Evidence("recorded_history.cpu_busy_pct (run seconds)", round(run.seconds)),
             Evidence("recorded_history.cpu_busy_pct (peak)", round(run.peak, 1))],
            "See the recorded top processes by CPU over that stretch (report: Before the collection) and what "
            "started it (the metric onset on the timeline).",
        )


class RecordedGrowth(Rule):
    code = "recorded-growth"
    title = "Memory or swap rising for a long time (recorded)"
    description = "Memory or swap use climbed several-fold and kept climbing up to the collection (a leak)."
    options = MappingProxyType({"fold": 3.0, "crit_fold": 10.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        h = view.snapshot.recorded_history
        for onset in metric_onsets(h):
            if onset.kind != "rise" or onset.unit != "bytes" or onset.before <= 0:
                continue
            fold = onset.after / onset.before
            if fold < self.opt("fold"):
                continue
            severity: Severity = "critical" if fold >= self.opt("crit_fold") else "warning"
            since = format_utc(onset.at_unix, seconds=False) or ""
            yield self.finding(
                severity,
                f"{onset.describe()[0].upper()}{onset.describe()[1:]} (recorded)",
                f"The flight recorder shows {onset.metric} level at {onset.before / 1024**3:.1f} GiB, then climbing "
                f"steadily from {since} to {onset.after / 1024**3:.1f} GiB at the last sample, "
                f"{fold:.1f} times as much. Still climbing, it will run out.",
                [Evidence(f"recorded_history.{onset.metric.replace(' ', '_')} (rise start)", since),
                 Evidence(f"recorded_history.{onset.metric.replace(' ', '_')} (before)", round(onset.before)),
                 Evidence(f"recorded_history.{onset.metric.replace(' ', '_')} (at the end)", round(onset.after))],
                "Find the process whose resident memory grew alongside (recorded top by RSS), and what changed "
                "when the climb began.",
                subject=onset.metric,
            )
