"""Errors of the analysis layer, under the agent's one exception tree.

    CasefileError (agent.errors)
    └── AnalysisError              analysis could not run on this input
        └── DifferentHostsError    a diff of bundles from two different hosts, without force
"""

from __future__ import annotations

from agent.errors import CasefileError

__all__ = ["AnalysisError", "DifferentHostsError"]


class AnalysisError(CasefileError):
    """Analysis could not run on this input (bad option, unreadable facts)."""


class DifferentHostsError(AnalysisError):
    """Two bundles to compare come from different hosts."""

    def __init__(self, message: str, *, host_a: str, host_b: str) -> None:
        super().__init__(message)
        self.host_a = host_a
        self.host_b = host_b
