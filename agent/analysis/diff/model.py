"""What a diff is made of: measures with their noise, changes, sections, the result.

A ``Measure`` is one figure of one bundle together with what is known about its noise:
``sd`` is the standard error of a figure estimated from a sample (a random draw of
files, a sub-second CPU window), ``floor`` the smallest difference a reader should be
told about, ``rel`` the same as a share of the larger value. Two measures differ when
the difference is beyond all three (``tolerance``); exact facts (a kernel version, a
mount's device) have none and differ when they are not equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Change", "DiffResult", "DiffSection", "Measure", "NotCompared", "Value", "differs", "finite", "tolerance"]

Value = str | int | float | bool | None

# Two figures estimated from independent samples differ "for real" when they are more
# than this many standard errors of their difference apart (about 1 in 370 by chance).
SIGMAS = 3.0


@dataclass(frozen=True)
class Measure:
    """One figure, how it is shown (``unit``, an absolute ``size`` beside a percentage) and its noise."""

    value: Value
    unit: str = ""
    size: int | None = None
    sd: float = 0.0
    floor: float = 0.0
    rel: float = 0.0


def _number(v: Value) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def finite(v: Value) -> Value:
    """``v``, or None for a float that is not a number JSON can carry (facts are untrusted)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def tolerance(a: Measure, b: Measure) -> float:
    """The largest difference between ``a`` and ``b`` that is still noise (0 for exact facts)."""
    x, y = _number(a.value) or 0.0, _number(b.value) or 0.0
    sd = math.hypot(a.sd, b.sd)
    sampled = SIGMAS * sd if math.isfinite(sd) else 0.0
    relative = max(a.rel, b.rel) * max(abs(x), abs(y))
    return max(a.floor, b.floor, sampled, relative if math.isfinite(relative) else 0.0)


def differs(a: Measure, b: Measure) -> bool:
    x, y = _number(a.value), _number(b.value)
    if x is None or y is None:
        return a.value != b.value
    if not (math.isfinite(x) and math.isfinite(y)):
        return not (x == y or (math.isnan(x) and math.isnan(y)))
    return abs(y - x) > tolerance(a, b)


@dataclass(frozen=True)
class Change:
    """One figure of one item that moved beyond its noise; sizes stand beside percentages."""

    key: str
    field: str
    before: Value
    after: Value
    unit: str = ""
    size_before: int | None = None
    size_after: int | None = None
    tolerance: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key, "field": self.field, "before": finite(self.before), "after": finite(self.after)
        }
        if self.unit:
            out["unit"] = self.unit
        if self.size_before is not None or self.size_after is not None:
            out["size_before"], out["size_after"] = self.size_before, self.size_after
        if self.tolerance:
            out["tolerance"] = round(self.tolerance, 3)
        return out


@dataclass(frozen=True)
class NotCompared:
    """An item (``key``; empty for the whole section) one bundle cannot speak for, and why."""

    key: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "reason": self.reason}


Described = tuple[tuple[str, Measure], ...]


@dataclass(frozen=True)
class DiffSection:
    """Added, removed and changed items of one fact area, and what could not be compared.

    ``details`` holds the figures that describe an added or removed item (a new
    process's CPU % and RSS, a new mount's size), keyed like ``added``/``removed``.
    """

    name: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[Change, ...] = ()
    not_compared: tuple[NotCompared, ...] = ()
    details: tuple[tuple[str, Described], ...] = ()

    @property
    def empty(self) -> bool:
        """No change found (what was not compared is not a change)."""
        return not (self.added or self.removed or self.changed)

    def detail(self, key: str) -> dict[str, Measure]:
        return dict(next((d for k, d in self.details if k == key), ()))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": [c.to_dict() for c in self.changed],
            "not_compared": [n.to_dict() for n in self.not_compared],
        }
        if self.details:
            out["values"] = {k: {f: finite(m.value) for f, m in d} for k, d in self.details}
        return out


@dataclass(frozen=True)
class DiffResult:
    host_a: str
    host_b: str
    bundle_a: str
    bundle_b: str
    collected_a: str
    collected_b: str
    sections: tuple[DiffSection, ...] = field(default=())

    def section(self, name: str) -> DiffSection:
        return next(s for s in self.sections if s.name == name)

    @property
    def empty(self) -> bool:
        return all(s.empty for s in self.sections)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": {"host": self.host_a, "bundle_id": self.bundle_a, "collected_at": self.collected_a},
            "b": {"host": self.host_b, "bundle_id": self.bundle_b, "collected_at": self.collected_b},
            "sections": {s.name: s.to_dict() for s in self.sections},
        }
