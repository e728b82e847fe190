"""Rules turn a bundle into findings; the registry holds built-ins and plugins.

A rule (``agent.analysis.rule.Rule``, re-exported here) is a small class that *declares*
its code, title, description and default thresholds (``options``), and implements
``evaluate(view)`` yielding findings. Plugins register rule classes under the
``casefile.analyzers`` entry point group (loaded by ``agent.plugins``). A plugin that
fails to load, or a rule that raises, becomes an ``analyzer-error`` info finding:
analysis of a customer's bundle never crashes on one bad rule.

Exit status of ``casefile findings`` follows the worst severity (``exit_code_for``):
0 no findings or only info, 10 at least one warning, 20 at least one critical.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.analysis.model import SEVERITY_RANK, Finding, Severity
from agent.analysis.rule import Rule, rule_problems
from agent.plugins import BrokenPlugin, describe_exception, load_plugins

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = [
    "ENTRY_POINT_GROUP",
    "EXIT_CRITICAL",
    "EXIT_OK",
    "EXIT_WARNING",
    "BrokenRule",
    "FindingsResult",
    "Rule",
    "RuleRegistry",
    "build_rule_registry",
    "exit_code_for",
    "registered_rules",
    "rule_problems",
    "run_rules",
]

ENTRY_POINT_GROUP = "casefile.analyzers"
EXIT_OK, EXIT_WARNING, EXIT_CRITICAL = 0, 10, 20


# A rule plugin that did not load as a sound rule: ``agent.plugins.BrokenPlugin``.
BrokenRule = BrokenPlugin


@dataclass(frozen=True)
class RuleRegistry:
    rules: tuple[type[Rule], ...]
    broken: tuple[BrokenRule, ...] = ()

    def codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.rules)


def build_rule_registry(rules: Iterable[type[Rule]], broken: Iterable[BrokenRule] = ()) -> RuleRegistry:
    """Check declarations; a duplicate code or a bad built-in is a ValueError naming it."""
    classes = tuple(rules)
    seen: dict[str, str] = {}
    for cls in classes:
        problems = rule_problems(cls)
        if problems:
            raise ValueError(f"rule {cls!r} is declared wrongly: {'; '.join(problems)}")
        if cls.code in seen:
            raise ValueError(f"two rules have code {cls.code!r}: {seen[cls.code]} and {cls.__qualname__}")
        seen[cls.code] = cls.__qualname__
    return RuleRegistry(classes, tuple(broken))


_lock = threading.Lock()
_registry: RuleRegistry | None = None


def registered_rules(*, refresh: bool = False) -> RuleRegistry:
    """Built-in rules plus plugins from ``casefile.analyzers`` (scanned once, cached)."""
    global _registry
    with _lock:
        if _registry is None or refresh:
            from agent.analysis.rules import BUILTIN_RULES  # loaded when first asked for, not on import

            plugins, broken = _load_plugins({r.code for r in BUILTIN_RULES})
            _registry = build_rule_registry((*BUILTIN_RULES, *plugins), broken)
        return _registry


def _load_plugins(taken: set[str]) -> tuple[list[type[Rule]], list[BrokenRule]]:
    return load_plugins(ENTRY_POINT_GROUP, rule_problems, key=lambda r: str(r.code), key_label="code", taken=taken)


def _error_finding(name: str, error: str) -> Finding:
    return Finding(
        code="analyzer-error",
        severity="info",
        title=f"Analyzer {name} could not run",
        explanation=f"{error}. The other rules ran; this one's conclusions are missing from this report.",
        evidence=(),
        next_step="Reinstall or fix the analyzer plugin; the bundle itself is unaffected.",
        subject=name,
        rule=name,
    )


@dataclass(frozen=True)
class FindingsResult:
    findings: tuple[Finding, ...]
    rules_run: tuple[str, ...]

    @property
    def worst(self) -> Severity | None:
        if not self.findings:
            return None
        return max(self.findings, key=lambda f: SEVERITY_RANK[f.severity]).severity

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.worst)

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "worst": self.worst,
            "exit_code": self.exit_code,
            "counts": {s: self.count(s) for s in ("critical", "warning", "info")},
            "rules_run": list(self.rules_run),
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False)


def exit_code_for(worst: Severity | None) -> int:
    return {"critical": EXIT_CRITICAL, "warning": EXIT_WARNING}.get(worst or "", EXIT_OK)


def run_rules(
    view: BundleView,
    registry: RuleRegistry | None = None,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
) -> FindingsResult:
    """Every rule over ``view``; findings sorted critical first, then by code and subject."""
    registry = registry or registered_rules()
    findings: list[Finding] = [_error_finding(b.name, b.error) for b in registry.broken]
    for cls in registry.rules:
        try:
            rule = cls(**(overrides or {}).get(cls.code, {}))
            findings.extend(rule.evaluate(view))
        except Exception as exc:  # one rule failing never hides the others
            findings.append(_error_finding(cls.code, f"rule raised {describe_exception(exc)}"))
    findings.sort(key=lambda f: (-SEVERITY_RANK[f.severity], f.code, f.subject))
    return FindingsResult(tuple(findings), registry.codes())
