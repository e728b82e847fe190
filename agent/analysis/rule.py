"""The base of every analysis rule, a layer below the registry (``agent.analysis.findings``).

A rule is a small class that *declares* its code, title, description and default
thresholds (``options``), and implements ``evaluate(view)`` yielding findings. The
built-in rules (``agent.analysis.rules``) and plugins build on this module alone, so the
registry can import them without either importing the other in a circle.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar

from agent.analysis.model import Evidence, Finding, LogEvidence, Severity

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = ["Rule", "rule_problems"]

_CODE_RE = re.compile(r"[a-z][a-z0-9-]*\Z")


class Rule(ABC):
    """One check over a bundle. Subclasses declare the class attributes and implement evaluate.

    ``options`` are the default thresholds; an instance may override them
    (``Rule(**{"warn_pct": 80})``), which is how tests and callers tune a rule.
    """

    code: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[Mapping[str, float]] = MappingProxyType({})

    def __init__(self, **overrides: float) -> None:
        unknown = set(overrides) - set(self.options)
        if unknown:
            raise ValueError(f"rule {self.code}: unknown options {sorted(unknown)}")
        self._values = {**self.options, **overrides}

    def opt(self, name: str) -> float:
        return self._values[name]

    @abstractmethod
    def evaluate(self, view: BundleView) -> Iterable[Finding]:
        """Yield the findings this rule draws from ``view`` (none when healthy)."""

    def finding(
        self,
        severity: Severity,
        title: str,
        explanation: str,
        evidence: Iterable[Evidence | LogEvidence],
        next_step: str,
        *,
        subject: str = "",
    ) -> Finding:
        return Finding(
            code=self.code,
            severity=severity,
            title=title,
            explanation=explanation,
            evidence=tuple(evidence),
            next_step=next_step,
            subject=subject,
            rule=type(self).__name__,
        )


def rule_problems(obj: object) -> list[str]:
    """What is wrong with a rule class's declarations; empty when it is sound."""
    if not (isinstance(obj, type) and issubclass(obj, Rule)):
        return [f"{obj!r} is not a Rule subclass"]
    problems: list[str] = []
    code = getattr(obj, "code", None)
    if not (isinstance(code, str) and _CODE_RE.match(code)):
        problems.append(f"code {code!r} is not a lowercase-dashed identifier")
    if getattr(obj, "__abstractmethods__", None):
        problems.append("evaluate() is not implemented")
    for attr in ("title", "description"):
        value = getattr(obj, attr, None)
        if not (isinstance(value, str) and value.strip()):
            problems.append(f"{attr} is empty")
    options = getattr(obj, "options", None)
    if not isinstance(options, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in options.items()
    ):
        problems.append("options must map names to numbers")
    return problems
