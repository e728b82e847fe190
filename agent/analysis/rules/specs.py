"""Findings of collection specs: each spec's own rules, read back from its facts.

A spec's collector (``agent.specs.runner``) stores in ``plugin_facts["spec_<name>"]``
the spec's identity, its rules and the pattern counts it made. This rule turns them into
findings from the bundle alone (no spec file needed to analyse it later, on the
collector or elsewhere):

* a count rule fires when its pattern matched at least ``at_least`` lines;
* a fact rule reads a dotted path of ``facts.json`` (``memory.available``,
  ``plugin_facts.spec_postgresql.commands.0.exit_status``) and fires when the number
  there is above ``above`` or below ``below``.

Each finding is titled by the spec's rule, names the spec and its version in the
explanation and carries the rule's next step. Malformed facts yield nothing: they came
from a signed bundle, but a rule never crashes analysis over them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from agent.analysis.model import Evidence, Finding, Severity
from agent.analysis.rule import Rule
from agent.bundle.factsjson import message_to_plain

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = ["SpecRules", "fact_at"]

PREFIX = "spec_"
_SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")


def fact_at(doc: object, path: str) -> object:
    """The value at the dotted ``path`` of ``doc`` (list items by index), else None."""
    value = doc
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


class SpecRules(Rule):
    code = "spec"
    title = "Collection spec rules"
    description = (
        "The analysis rules of the collection specs that ran (patterns in their logs and commands, thresholds)."
    )

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        plain: dict[str, Any] | None = None
        for key in sorted(view.snapshot.plugin_facts):
            if not key.startswith(PREFIX):
                continue
            try:
                facts = json.loads(view.snapshot.plugin_facts[key])
            except ValueError:
                continue
            if not isinstance(facts, dict) or not isinstance(facts.get("rules"), list):
                continue
            spec = facts.get("spec")
            spec = spec if isinstance(spec, dict) else {}
            label = f"spec {spec.get('name', key)} v{spec.get('version', '?')}"
            counts = facts.get("counts")
            counts = counts if isinstance(counts, dict) else {}
            for rule in facts["rules"]:
                if not isinstance(rule, dict) or rule.get("severity") not in _SEVERITIES:
                    continue
                if rule.get("count") is not None:
                    found = self._count(key, label, rule, counts)
                else:
                    if plain is None:
                        plain = _plain(view)
                    found = self._fact(key, label, rule, plain)
                if found is not None:
                    yield found

    def _make(self, key: str, label: str, rule: Mapping[str, Any], evidence: Evidence, why: str) -> Finding:
        return self.finding(
            rule["severity"],
            str(rule.get("title", rule.get("id", "spec rule"))),
            f"{rule.get('explanation', '')} ({label}: {why})",
            [evidence],
            str(rule.get("next_step", "")),
            subject=f"{key}:{rule.get('id', '')}",
        )

    def _count(self, key: str, label: str, rule: Mapping[str, Any], counts: Mapping[str, Any]) -> Finding | None:
        n = counts.get(str(rule.get("id")))
        at_least = _number(rule.get("at_least"))
        if not isinstance(n, int) or isinstance(n, bool) or at_least is None or n < at_least:
            return None
        evidence = Evidence(f"plugin_facts.{key}.counts.{rule.get('id')}", n)
        return self._make(key, label, rule, evidence, f"{n} lines match {str(rule.get('count'))[:80]!r}")

    def _fact(self, key: str, label: str, rule: Mapping[str, Any], plain: Mapping[str, Any]) -> Finding | None:
        path = str(rule.get("fact", ""))
        value = _number(fact_at(plain, path))
        if value is None:
            return None
        above, below = _number(rule.get("above")), _number(rule.get("below"))
        if above is not None and value > above:
            why = f"{path} = {value:g}, above {above:g}"
        elif below is not None and value < below:
            why = f"{path} = {value:g}, below {below:g}"
        else:
            return None
        return self._make(key, label, rule, Evidence(path, value), why)


def _plain(view: BundleView) -> dict[str, Any]:
    plain = message_to_plain(view.snapshot)
    plugins = plain.get("plugin_facts")
    if isinstance(plugins, dict):
        for name, text in list(plugins.items()):
            try:
                plugins[name] = json.loads(text)
            except (TypeError, ValueError):
                continue
    return plain
