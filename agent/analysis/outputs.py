"""What analysis adds to a bundle: ``findings.json`` and ``report.html``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from agent.analysis.analysis import analyse
from agent.analysis.report_html import render_html

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = ["seal_outputs"]


def seal_outputs(view: BundleView) -> dict[str, bytes]:
    """``{"findings.json": ..., "report.html": ...}`` for the bundle writer to add as members."""
    a = analyse(view)
    tl = a.timeline.to_dict()
    findings = {**a.findings.to_dict(), "timeline": {"summary": tl["summary"], "onset": tl["onset"],
                                                     "episodes": tl["episodes"],
                                                     "metric_onsets": tl["metric_onsets"]}}
    return {
        "findings.json": (json.dumps(findings, indent=1, ensure_ascii=False) + "\n").encode("utf-8"),
        "report.html": render_html(a).encode("utf-8"),
    }
