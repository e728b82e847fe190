"""Triggered capture in ``policy.json``: what makes the agent seal a bundle on its own.

The owner lists triggers; the flight recorder checks them after each sample
(``agent.daemon.trigger_watch``) and a trigger that fires seals a bundle of kind
``triggered`` with the recorded history around it (``agent.daemon.capture``)::

    "triggers": [
      {"name": "cpu-high", "when": "cpu", "above_pct": 90, "for_s": 600},
      {"name": "disk-full", "when": "disk", "above_pct": 95, "for_s": 60},
      {"name": "oom", "when": "oom_kill"},
      {"name": "oops", "when": "kernel_oops"},
      {"name": "unit", "when": "unit_failed", "scopes": ["facts", "logs"]}
    ],
    "triggers_max_per_hour": 4

``when``: a threshold — ``cpu`` (busy % of all CPUs), ``iowait``, ``memory``, ``swap``
(% used), ``disk`` (% used of the filesystem mounted at ``mount``, else of the fullest)
— held at or above ``above_pct``
for ``for_s`` seconds; or an event — ``oom_kill`` (the kernel's OOM killer ran),
``kernel_oops`` (the kernel marked itself tainted by an oops), ``unit_failed`` (a
systemd unit entered the failed state). A threshold fires once per episode: it must
fall below before it can fire again.

Rate limits: a trigger fires at most once every ``min_interval_s`` (default 1 h), and all
triggers together at most ``triggers_max_per_hour`` times in a rolling hour (0: no
triggered capture). ``scopes`` (default ``["facts"]``) must be among the policy's
``allowed_scopes``: a trigger never sends what an engineer could not ask for.
``history_s`` (default 1 h) is how much recorded history goes into the bundle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agent.errors import CasefileError
from agent.scopes import is_scope

__all__ = [
    "EVENTS",
    "THRESHOLDS",
    "TRIGGER_LIMITS",
    "TriggerSpec",
    "parse_triggers",
]

THRESHOLDS = ("cpu", "iowait", "memory", "swap", "disk")
EVENTS = ("oom_kill", "kernel_oops", "unit_failed")
MAX_TRIGGERS = 32
# (minimum, maximum) of each number in a trigger.
TRIGGER_LIMITS: dict[str, tuple[int, int]] = {
    "above_pct": (1, 100),
    "for_s": (0, 86400),
    "min_interval_s": (60, 7 * 86400),
    "history_s": (60, 8 * 86400),
}
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_FIELDS = frozenset({"name", "when", "scopes", "mount", *TRIGGER_LIMITS})


@dataclass(frozen=True)
class TriggerSpec:
    name: str
    when: str
    above_pct: int = 90
    for_s: int = 0
    min_interval_s: int = 3600
    history_s: int = 3600
    scopes: tuple[str, ...] = ("facts",)
    mount: str = ""  # disk only: the mount point watched; "" is the fullest filesystem

    @property
    def is_threshold(self) -> bool:
        return self.when in THRESHOLDS

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "when": self.when}
        if self.is_threshold:
            d.update(above_pct=self.above_pct, for_s=self.for_s)
        if self.mount:
            d["mount"] = self.mount
        d.update(min_interval_s=self.min_interval_s, history_s=self.history_s, scopes=list(self.scopes))
        return d


def parse_triggers(data: object, allowed_scopes: tuple[str, ...], where: str) -> tuple[TriggerSpec, ...]:
    """The ``triggers`` list of a policy; ``ValueError``-free: any problem is a CasefileError
    naming the file, the trigger (by position and name) and the field."""
    if not isinstance(data, list):
        raise CasefileError(f"policy {where}: triggers must be a list of objects; got {type(data).__name__}")
    if len(data) > MAX_TRIGGERS:
        raise CasefileError(f"policy {where}: at most {MAX_TRIGGERS} triggers; got {len(data)}")
    out: list[TriggerSpec] = []
    for i, item in enumerate(data):
        out.append(_one(item, allowed_scopes, f"policy {where}: triggers[{i}]"))
    names = [t.name for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CasefileError(f"policy {where}: trigger name(s) used twice: {', '.join(dup)}")
    return tuple(out)


def _one(item: object, allowed_scopes: tuple[str, ...], where: str) -> TriggerSpec:
    if not isinstance(item, dict):
        raise CasefileError(f"{where}: expected an object")
    extra = sorted(str(k) for k in set(item) - _FIELDS)
    if extra:
        raise CasefileError(f"{where}: unknown field(s) {', '.join(extra)}; known: {', '.join(sorted(_FIELDS))}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CasefileError(f"{where}: name must be 1-40 of a-z, 0-9, _ and - (starting with a letter or digit)")
    where = f"{where} ({name})"
    when = item.get("when")
    if when not in THRESHOLDS + EVENTS:
        raise CasefileError(f"{where}: when must be one of {', '.join(THRESHOLDS + EVENTS)}; got {when!r}")
    if when in EVENTS and ("above_pct" in item or "for_s" in item):
        raise CasefileError(f"{where}: above_pct and for_s are for thresholds, not the event {when}")
    if when in THRESHOLDS and "above_pct" not in item:
        raise CasefileError(f"{where}: a threshold needs above_pct")
    mount = item.get("mount", "")
    if mount and when != "disk":
        raise CasefileError(f"{where}: mount is for the disk threshold only")
    if not isinstance(mount, str) or (mount and (not mount.startswith("/") or len(mount) > 4096)):
        raise CasefileError(f"{where}: mount must be an absolute path (a mount point); got {str(mount)[:80]!r}")
    base = TriggerSpec(name, str(when))

    def number(field: str) -> int:
        value = item.get(field, getattr(base, field))
        lo, hi = TRIGGER_LIMITS[field]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise CasefileError(f"{where}: {field} must be an integer >= {lo} and <= {hi}; got {str(value)[:40]}")
        return value

    scopes = item.get("scopes", list(base.scopes))
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) and is_scope(s) for s in scopes):
        raise CasefileError(f"{where}: scopes must be a non-empty list of scope names; got {str(scopes)[:80]}")
    outside = [s for s in scopes if s not in allowed_scopes]
    if outside:
        raise CasefileError(
            f"{where}: scope(s) {', '.join(outside)} not in allowed_scopes "
            f"({', '.join(allowed_scopes) or 'none'}): a trigger sends only what an engineer may ask for"
        )
    return TriggerSpec(
        name=name,
        when=str(when),
        above_pct=number("above_pct"),
        for_s=number("for_s"),
        min_interval_s=number("min_interval_s"),
        history_s=number("history_s"),
        scopes=tuple(dict.fromkeys(scopes)),
        mount=mount.rstrip("/") or mount,
    )
