"""Comparing a hunt's bundles: which hosts stand out from the others.

Per metric (CPU, memory, load per core, swap, fullest filesystem — read from each
bundle's facts) the hosts are scored with the robust z-score of Iglewicz and Hoaglin,
``0.6745 * (x - median) / MAD``: one host at 99 % CPU among ten at 5 % moves the median
and the MAD hardly at all, where it would drag a mean and a standard deviation towards
itself and hide. A host stands out when ``|z| > 3.5`` (their suggested cut-off) and its
value differs from the median by at least the metric's ``min_gap`` (so 0.2 % against
0.1 % of swap is not news). With a MAD of 0 (most hosts equal) the mean absolute
deviation stands in (scaled by 1.2533, its ratio to the standard deviation for normal data); if that is 0 too,
nobody stands out. Fewer than three hosts give no median worth the name: no outliers.

Findings (from the analysis rules, by ``code:subject``) are listed when some hosts have
them and others do not: what is on every host is the fleet's normal, not this host's.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protos import facts_pb2

__all__ = ["METRICS", "Metric", "compare", "metrics_of", "outliers"]

Z_CUT = 3.5
MIN_HOSTS = 3


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    min_gap: float  # smallest distance from the median worth reporting


METRICS = (
    Metric("cpu_percent", "%", 10.0),
    Metric("memory_percent", "%", 10.0),
    Metric("load1_per_core", "", 0.5),
    Metric("swap_percent", "%", 10.0),
    Metric("filesystem_max_percent", "%", 10.0),
)


def metrics_of(snap: facts_pb2.Snapshot) -> dict[str, float]:
    """The compared figures a bundle holds; a section it lacks gives no figure (not 0)."""
    out: dict[str, float] = {}
    if snap.HasField("cpu"):
        out["cpu_percent"] = snap.cpu.total_percent
        if snap.cpu.logical_count > 0:
            out["load1_per_core"] = snap.cpu.load1 / snap.cpu.logical_count
    if snap.HasField("memory") and snap.memory.total > 0:
        out["memory_percent"] = snap.memory.percent
        if snap.memory.swap_total > 0:
            out["swap_percent"] = snap.memory.swap_percent
    if snap.HasField("disks"):
        used = [p.percent for p in snap.disks.partitions if not p.error and p.total > 0]
        if used:
            out["filesystem_max_percent"] = max(used)
    return out


def outliers(values: Mapping[str, float], min_gap: float) -> tuple[float | None, list[tuple[str, float, float]]]:
    """The median and the hosts standing out as (host, value, z), most extreme first."""
    clean = {h: v for h, v in values.items() if v == v and abs(v) != float("inf")}
    if len(clean) < MIN_HOSTS:
        return (statistics.median(clean.values()) if clean else None), []
    med = statistics.median(clean.values())
    spread = statistics.median(abs(v - med) for v in clean.values())
    scale = 0.6745 / spread if spread > 0 else 0.0
    if spread == 0:
        mean_ad = statistics.fmean(abs(v - med) for v in clean.values())
        scale = 0.7979 / mean_ad if mean_ad > 0 else 0.0  # 1 / 1.2533
    if scale == 0:
        return med, []
    found = []
    for host, v in clean.items():
        z = (v - med) * scale
        if abs(z) > Z_CUT and abs(v - med) >= min_gap:
            found.append((host, v, z))
    found.sort(key=lambda t: (-abs(t[2]), t[0]))
    return med, found


def compare(
    figures: Mapping[str, Mapping[str, float]], findings: Mapping[str, Sequence[tuple[str, str, str]]]
) -> dict[str, Any]:
    """``figures``: host → metric → value; ``findings``: host → (key, severity, title).

    Returns the JSON-ready comparison: per metric the median, the hosts compared and
    those standing out; the findings some hosts have and others lack.
    """
    hosts = sorted(set(figures) | set(findings))
    metrics: list[dict[str, Any]] = []
    for m in METRICS:
        values = {h: f[m.name] for h, f in figures.items() if m.name in f}
        med, odd = outliers(values, m.min_gap)
        metrics.append(
            {
                "metric": m.name,
                "unit": m.unit,
                "hosts": len(values),
                "median": med,
                "outliers": [{"host": h, "value": v, "z": round(z, 2)} for h, v, z in odd],
            }
        )
    by_key: dict[str, dict[str, Any]] = {}
    for host, items in findings.items():
        for key, severity, title in items:
            entry = by_key.setdefault(key, {"key": key, "severity": severity, "title": title, "hosts": set()})
            entry["hosts"].add(host)
    with_findings = set(findings)
    uneven = []
    for entry in sorted(by_key.values(), key=lambda e: e["key"]):
        have = sorted(entry["hosts"])
        lack = sorted(with_findings - entry["hosts"])
        if lack:
            uneven.append({**entry, "hosts": have, "absent_on": lack})
    return {"hosts": hosts, "metrics": metrics, "uneven_findings": uneven}
