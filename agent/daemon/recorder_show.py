"""``casefile agent history --metrics``: what the flight recorder keeps on this machine.

The customer sees exactly what is recorded: where, how much, every metric with its range
over the window, and the samples themselves (all of them in ``--json``; in the console a
table of the core metrics, thinned to at most ``ROWS`` rows).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path
from typing import Any

from agent.recorder_db import DB_NAME, Sample, read_samples

__all__ = ["ROWS", "metrics_document", "render"]

ROWS = 60
_CORE = (
    "cpu.user_pct",
    "cpu.system_pct",
    "cpu.iowait_pct",
    "cpu.steal_pct",
    "load.1m",
    "mem.used_bytes",
    "swap.used_bytes",
)


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds")


def metrics_document(home: Path, since_s: float, now: float | None = None) -> dict[str, Any]:
    """The recorded window as one JSON-ready document."""
    now = time.time() if now is None else now
    samples = list(read_samples(home, now - since_s, now))
    path = home / DB_NAME
    size = sum(p.stat().st_size for p in home.glob(DB_NAME + "*")) if path.exists() else 0
    per: dict[str, list[float]] = {}
    for s in samples:
        for k, v in s.metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                per.setdefault(k, []).append(float(v))
    summary = {
        k: {"count": len(v), "min": min(v), "max": max(v), "mean": round(sum(v) / len(v), 3), "last": v[-1]}
        for k, v in sorted(per.items())
    }
    return {
        "database": str(path),
        "bytes_on_disk": size,
        "window": {"since": _iso(now - since_s), "until": _iso(now)},
        "sample_count": len(samples),
        "summary": summary,
        "samples": [{"at": _iso(s.at), "resolution_s": s.resolution_s, "metrics": s.metrics} for s in samples],
    }


def render(doc: dict[str, Any], samples: list[Sample] | None = None) -> list[Any]:
    """Rich renderables for the console: the summary table and the thinned samples."""
    from rich.table import Table
    from rich.text import Text

    from agent.daemon.history import shown

    if not doc["sample_count"]:
        return [Text(f"nothing recorded in {doc['window']['since']} .. {doc['window']['until']} ({doc['database']})")]
    head = Text(
        f"{doc['sample_count']} samples, {doc['window']['since']} .. {doc['window']['until']}; "
        f"{doc['database']} ({doc['bytes_on_disk']:,} bytes on disk)"
    )
    summary = Table("metric", "samples", "min", "mean", "max", "last", title="Recorded metrics")
    for k, v in doc["summary"].items():
        summary.add_row(Text(shown(k, 80)), str(v["count"]), *(f"{v[f]:,.6g}" for f in ("min", "mean", "max", "last")))
    rows = doc["samples"]
    step = max(1, math.ceil(len(rows) / ROWS))
    title = "Samples" if step == 1 else f"Samples (every {step}th of {len(rows)}; --json for all)"
    table = Table(
        "at (UTC)",
        "user %",
        "sys %",
        "iowait %",
        "steal %",
        "load",
        "mem MiB",
        "swap MiB",
        "top CPU",
        "top RSS",
        title=title,
    )
    for row in rows[::step]:
        m = row["metrics"]

        def cell(key: str, scale: float = 1.0, m: dict[str, Any] = m) -> str:
            v = m.get(key)
            return f"{v / scale:,.1f}" if isinstance(v, int | float) else "-"

        table.add_row(
            row["at"][:19].replace("T", " "),
            *(cell(k) for k in _CORE[:5]),
            cell("mem.used_bytes", 1 << 20),
            cell("swap.used_bytes", 1 << 20),
            Text(shown(",".join(str(p[0]) for p in m.get("top_cpu", [])[:3]), 60)),
            Text(shown(",".join(str(p[0]) for p in m.get("top_rss", [])[:3]), 60)),
        )
    return [head, summary, table]
