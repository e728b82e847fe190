"""What a collection asks for: the ``CollectionSpec`` (which collectors, their budgets,
options for them, the run's total budget), checked when it is made.

``agent.collect.framework`` re-exports it beside the collector API.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

from agent.errors import CollectionError

__all__ = ["DEFAULT_TOTAL_BUDGET_S", "MAX_BUDGET_OVERRIDE_S", "CollectionSpec", "OptionValue"]

# A spec may give a collector more time than it declares (deep collections), within reason.
MAX_BUDGET_OVERRIDE_S = 3600.0
# The whole run, all collectors together; a live snapshot wants far less than this.
DEFAULT_TOTAL_BUDGET_S = 20.0

OptionValue: TypeAlias = str | int | float | bool


def _names(what: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise CollectionError(f"collection spec: {what} must be a sequence of collector names")
    names = tuple(value)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise CollectionError(f"collection spec: {what} holds non-string names {bad!r}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class CollectionSpec:
    """What to collect: which collectors, their budgets, and options for them.

    ``only`` empty means the default scope. Names are checked against the registry when
    the collection runs (an unknown one is a CollectionError listing the known ones).
    ``total_budget_s`` bounds the whole run: collectors still running then are TIMEOUT.
    """

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    budgets: Mapping[str, float] = field(default_factory=dict)
    options: Mapping[str, OptionValue] = field(default_factory=dict)
    total_budget_s: float = DEFAULT_TOTAL_BUDGET_S

    def __post_init__(self) -> None:
        total = self.total_budget_s
        if isinstance(total, bool) or not isinstance(total, int | float) or not 0 < total <= MAX_BUDGET_OVERRIDE_S:
            raise CollectionError(
                f"collection spec: total_budget_s must be a number of seconds in "
                f"(0, {MAX_BUDGET_OVERRIDE_S:g}], got {total!r}"
            )
        object.__setattr__(self, "total_budget_s", float(total))
        object.__setattr__(self, "only", _names("only", self.only))
        object.__setattr__(self, "exclude", _names("exclude", self.exclude))
        for what in ("budgets", "options"):
            if not isinstance(getattr(self, what), Mapping):
                raise CollectionError(f"collection spec: {what} must be a mapping")
        budgets: dict[str, float] = {}
        for name, value in dict(self.budgets).items():
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not (isinstance(name, str) and ok and 0 < value <= MAX_BUDGET_OVERRIDE_S):
                raise CollectionError(
                    f"collection spec: budget for {name!r} must be a number of seconds in "
                    f"(0, {MAX_BUDGET_OVERRIDE_S:g}], got {value!r}"
                )
            budgets[name] = float(value)
        options = dict(self.options)
        for key, opt in options.items():
            if not isinstance(key, str) or not isinstance(opt, str | int | float | bool):
                raise CollectionError(f"collection spec: option {key!r} has unsupported value {opt!r}")
            if isinstance(opt, float) and not math.isfinite(opt):
                raise CollectionError(f"collection spec: option {key!r} is not finite: {opt!r}")
        object.__setattr__(self, "budgets", MappingProxyType(budgets))
        object.__setattr__(self, "options", MappingProxyType(options))

    def to_dict(self) -> dict[str, object]:
        return {
            "only": list(self.only),
            "exclude": list(self.exclude),
            "budgets": dict(self.budgets),
            "options": dict(self.options),
            "total_budget_s": self.total_budget_s,
        }
