"""One analysis of one view: findings and timeline together, computed once for every renderer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.analysis.findings import FindingsResult, RuleRegistry, run_rules
from agent.analysis.timeline import Timeline, build_timeline

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = ["Analysis", "analyse"]


@dataclass(frozen=True)
class Analysis:
    view: BundleView
    findings: FindingsResult
    timeline: Timeline


def analyse(view: BundleView, *, interval_s: int | None = None, registry: RuleRegistry | None = None) -> Analysis:
    """Run every rule and build the timeline (the logs are read once, shared by both)."""
    return Analysis(view=view, findings=run_rules(view, registry), timeline=build_timeline(view, interval_s))
