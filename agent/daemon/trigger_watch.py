"""Checking the policy's triggers after each flight-recorder sample (see ``trigger_spec``).

Runs in the recorder's thread, right after a sample is stored: no thread or timer of its
own wakes the machine. A threshold is read from the sample itself (dictionary look-ups);
an event costs one small read per sample, and only when a trigger asks for it:

- ``oom_kill``: the ``oom_kill`` counter of ``/proc/vmstat`` (Linux 4.13+) went up;
- ``kernel_oops``: ``/proc/sys/kernel/tainted`` gained bit 7 (``D``: the kernel died in
  an oops or BUG);
- ``unit_failed``: ``systemctl list-units --state=failed`` names a unit it did not name
  before; a process, so at most once every ``UNIT_CHECK_S``.

What was true when the watch started (a unit failed last week, a taint from an old
oops) is the baseline, never a firing: the crash collectors report the past. Firing is
rate-limited per trigger (``min_interval_s``) and overall (``max_per_hour``); the
previous firings are handed in at start (from the history) so a restart does not reset
the limits.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.daemon.trigger_spec import TriggerSpec

__all__ = ["UNIT_CHECK_S", "Firing", "TriggerWatch", "failed_units", "threshold_value"]

log = logging.getLogger("casefile.agent.daemon")

UNIT_CHECK_S = 60.0
_TAINT_DIE = 1 << 7
_SYSTEMCTL = ("systemctl", "list-units", "--state=failed", "--no-legend", "--plain", "--no-pager")


@dataclass(frozen=True)
class Firing:
    """One trigger that fired: what the capture needs and what the history records."""

    trigger: TriggerSpec
    at: float
    detail: str


def threshold_value(when: str, metrics: dict[str, Any], mount: str = "") -> tuple[float, str] | None:
    """The sample's value for a threshold, in %, and what it is; None when not measured."""

    def num(key: str) -> float | None:
        v = metrics.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    if when == "cpu":
        parts = [num(f"cpu.{k}_pct") for k in ("user", "system", "iowait", "steal")]
        known = [p for p in parts if p is not None]
        return (sum(known), "CPU busy") if known else None
    if when == "iowait":
        v = num("cpu.iowait_pct")
        return None if v is None else (v, "I/O wait")
    if when in ("memory", "swap"):
        key = "mem" if when == "memory" else "swap"
        used, total = num(f"{key}.used_bytes"), num(f"{key}.total_bytes")
        return (100.0 * used / total, f"{when} used") if used is not None and total else None
    if when == "disk" and mount:
        v = num(f"fs.{mount}.used_pct")
        return None if v is None else (v, f"filesystem {mount} used")
    if when == "disk":
        suffix = ".used_pct"
        uses = [
            (v, k[3 : -len(suffix)])
            for k in metrics
            if k.startswith("fs.") and k.endswith(suffix) and (v := num(k)) is not None
        ]
        if not uses:
            return None
        value, mount = max(uses)
        return value, f"filesystem {mount} used"
    return None


def failed_units(command: Sequence[str] = _SYSTEMCTL, timeout: float = 10.0) -> frozenset[str] | None:
    """The failed systemd units; None when systemctl cannot tell (no systemd, not booted with it)."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    units = set()
    for line in done.stdout.splitlines():
        f = line.split()
        if f and f[0].startswith("●"):
            f = f[1:]
        if f and len(f[0]) <= 256:
            units.add(f[0])
    return frozenset(units)


def _read_int(path: str, key: str | None = None) -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    try:
        if key is None:
            return int(text.split()[0])
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (ValueError, IndexError):
        return None
    return None


@dataclass
class TriggerWatch:
    triggers: tuple[TriggerSpec, ...]
    max_per_hour: int
    proc: str = "/proc"
    units: Callable[[], frozenset[str] | None] = failed_units
    past: Iterable[tuple[str, float]] = ()  # (trigger name, unix time) of earlier firings
    monotonic: Callable[[], float] = time.monotonic
    _held: dict[str, float] = field(default_factory=dict)  # threshold name -> since when
    _spent: set[str] = field(default_factory=set)  # thresholds that fired this episode
    _last: dict[str, float] = field(default_factory=dict)
    _recent: deque[float] = field(default_factory=deque)
    _oom: int | None = None
    _taint: int | None = None
    _failed: frozenset[str] | None = None
    _units_at: float | None = None

    def __post_init__(self) -> None:
        for name, at in sorted(self.past, key=lambda p: p[1]):
            self._last[name] = max(at, self._last.get(name, at))
            self._recent.append(at)
        whens = {t.when for t in self.triggers}
        # The baselines: what is already so when the watch starts never fires.
        if "oom_kill" in whens:
            self._oom = _read_int(f"{self.proc}/vmstat", "oom_kill")
        if "kernel_oops" in whens:
            self._taint = _read_int(f"{self.proc}/sys/kernel/tainted")

    def observe(self, at: float, metrics: dict[str, Any]) -> list[Firing]:
        """The triggers this sample fires, after the rate limits."""
        events = self._events()
        fired: list[Firing] = []
        for t in self.triggers:
            detail = events.get(t.when) if not t.is_threshold else self._threshold(t, at, metrics)
            if detail is None:
                continue
            why = self._limited(t, at)
            if why:
                log.info("trigger %s not fired (%s): %s", t.name, why, detail)
                continue
            self._last[t.name] = at
            self._recent.append(at)
            fired.append(Firing(t, at, detail))
        return fired

    def _threshold(self, t: TriggerSpec, at: float, metrics: dict[str, Any]) -> str | None:
        measured = threshold_value(t.when, metrics, t.mount)
        if measured is None:
            return None  # not measured in this sample: the episode neither starts nor ends
        value, what = measured
        if value < t.above_pct:
            self._held.pop(t.name, None)
            self._spent.discard(t.name)
            return None
        since = self._held.setdefault(t.name, at)
        if t.name in self._spent or at - since < t.for_s:
            return None
        self._spent.add(t.name)
        return f"{what} {value:.0f} % >= {t.above_pct} % for {at - since:.0f} s (at least {t.for_s} s)"

    def _limited(self, t: TriggerSpec, at: float) -> str:
        last = self._last.get(t.name)
        if last is not None and at - last < t.min_interval_s:
            return f"fired {at - last:.0f} s ago; min_interval_s {t.min_interval_s}"
        while self._recent and self._recent[0] <= at - 3600:
            self._recent.popleft()
        if len(self._recent) >= self.max_per_hour:
            return f"triggers_max_per_hour {self.max_per_hour} reached"
        return ""

    def _events(self) -> dict[str, str]:
        out: dict[str, str] = {}
        whens = {t.when for t in self.triggers}
        if "oom_kill" in whens:
            now = _read_int(f"{self.proc}/vmstat", "oom_kill")
            if now is not None and self._oom is not None and now > self._oom:
                out["oom_kill"] = f"the kernel's OOM killer ran {now - self._oom} time(s) (oom_kill {now})"
            self._oom = now if now is not None else self._oom
        if "kernel_oops" in whens:
            taint = _read_int(f"{self.proc}/sys/kernel/tainted")
            if taint is not None and self._taint is not None and taint & _TAINT_DIE and not self._taint & _TAINT_DIE:
                out["kernel_oops"] = f"the kernel oopsed (tainted {taint}: flag D)"
            self._taint = taint if taint is not None else self._taint
        if "unit_failed" in whens:
            tick = self.monotonic()
            if self._units_at is None or tick - self._units_at >= UNIT_CHECK_S:
                self._units_at = tick
                units = self.units()
                if units is not None and self._failed is not None and units - self._failed:
                    out["unit_failed"] = "unit(s) failed: " + ", ".join(sorted(units - self._failed)[:10])
                self._failed = units if units is not None else self._failed
        return out
