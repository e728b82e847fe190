"""The customer's policy for live snapshots: ``<home>/policy.json``.

The machine's owner decides what engineers may ask for; the agent enforces it before
collecting anything, and answers a request outside it with ``denied`` and the detail
``denied by policy: <rule>`` (never silently). Written with these defaults on the
daemon's first start when missing; edit it and restart the service::

    {
      "version": 1,
      "allowed_scopes": ["facts"],      // of: facts, logs, fragmentation, crashes,
                                        //   plugin:<name> (one per plugin collector)
      "spec_signers": [],               // keys trusted to sign collection specs (sha256:<hex>)
      "live_specs": [],                 // specs a live request may name: a spec's name, or
                                        //   sha256:<hex>/* for every spec of one signer
      "max_logs_window_s": 3600,        // largest --since for logs; also the window of a
                                        //   request that names none (0: no logs at all)
      "rate_limit_per_hour": 12,        // accepted requests per rolling hour (0: no limit)
      "profile": "standard",            // redaction: standard, private or facts-only
      "spool_max_bytes": 268435456,     // undeliverable bundles kept at most (256 MiB)
      "spool_max_bundles": 50,          //   ... and at most this many
      "recorder_interval_s": 10,        // flight recorder: seconds between samples (0: off)
      "recorder_fine_s": 21600,         //   every sample kept this long (6 h), then one a minute
      "recorder_retention_s": 604800,   //   ... up to this age (7 days)
      "recorder_max_bytes": 33554432,   //   ... in at most this much disk (32 MiB)
      "triggers": [],                   // triggered capture (agent.daemon.trigger_spec)
      "triggers_max_per_hour": 4,       //   all triggers together, per rolling hour (0: off)
      "crash_core_files": false,        // the crashes scope may include systemd-coredump's core
                                        //   files (process memory, secrets included; standard
                                        //   profile only, never private or facts-only)
      "crash_core_max_bytes": 67108864  //   ... newest first, whole files, at most this much (64 MiB)
    }

The scopes and what each collects are in ``agent.scopes`` (one table, which the
collector reads too). A live request that names a collection spec (``snapshot --spec``)
carries the signed spec; it runs only when its signer is in ``spec_signers`` and the
spec (or its signer) in ``live_specs`` — checked in ``agent.daemon.service`` — and it
never widens the scopes or the logs window: its logs are read within the same window.
``commands`` in an old policy loads with a deprecation note (``notes``) and allows
nothing. A plugin scope's collector reads its own logs within the same window as the
``logs`` scope.

A request that names no logs window (``since_seconds`` 0, what ``snapshot`` without
``--since`` sends) gets ``max_logs_window_s``, never the collector's own default of a day:
leaving the option out is no way around the policy. A negative window is refused. Every
number has a ceiling (``LIMITS``) so a typo of a few digits is an error at start, not a
window before the epoch or a spool the disk cannot hold.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.daemon.recorder_settings import RecorderSettings
from agent.daemon.trigger_spec import TriggerSpec, parse_triggers
from agent.errors import CasefileError
from agent.scopes import (
    DEPRECATED_SCOPES,
    SCOPE_COLLECTORS,
    SCOPES,
    check_live_specs,
    check_spec_signers,
    collectors_for,
    is_scope,
    reads_logs,
    spec_of,
)

__all__ = [
    "DEFAULT_POLICY",
    "LIMITS",
    "PROFILE_NAMES",
    "SCOPES",
    "SCOPE_COLLECTORS",
    "Policy",
    "PolicyError",
    "collectors_for",
    "load_policy",
]

# The names of ``agent.redact.PROFILES``, repeated so the resident daemon can check its
# policy without importing the redaction package (its rules and psutil); a test keeps
# the two equal.
PROFILE_NAMES = ("standard", "private", "facts-only")

# The largest value of each number in the policy.
LIMITS: dict[str, int] = {
    "max_logs_window_s": 366 * 86400,  # a year of logs
    "rate_limit_per_hour": 3600,  # one a second
    "spool_max_bytes": 1 << 40,  # 1 TiB
    "spool_max_bundles": 100_000,
    "recorder_interval_s": 3600,
    "recorder_fine_s": 7 * 86400,
    "recorder_retention_s": 366 * 86400,
    "recorder_max_bytes": 1 << 36,  # 64 GiB
    "triggers_max_per_hour": 60,
    "crash_core_max_bytes": 1 << 32,  # 4 GiB, a bundle a collector accepts (corefiles.CORE_MAX_BYTES_LIMIT)
}


class PolicyError(CasefileError):
    """The policy file cannot be used; names the file and the field."""


@dataclass(frozen=True)
class Policy:
    allowed_scopes: tuple[str, ...] = ("facts",)
    max_logs_window_s: int = 3600
    rate_limit_per_hour: int = 12
    profile: str = "standard"
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_max_bundles: int = 50
    # The flight recorder (agent.daemon.recorder); 0 in the interval, retention or size: off.
    recorder_interval_s: int = 10
    recorder_fine_s: int = 6 * 3600
    recorder_retention_s: int = 7 * 86400
    recorder_max_bytes: int = 32 * 1024 * 1024
    # Triggered capture (agent.daemon.trigger_spec); sampled with the recorder, so off with it.
    triggers: tuple[TriggerSpec, ...] = ()
    triggers_max_per_hour: int = 4
    # Core files in the crashes scope (agent.collect.builtin.corefiles): off unless the owner says.
    crash_core_files: bool = False
    crash_core_max_bytes: int = 64 * 1024 * 1024
    # Collection specs (agent.specs): who may sign them, which may run live.
    spec_signers: tuple[str, ...] = ()
    live_specs: tuple[str, ...] = ()
    # What loading noticed (a deprecated scope); the daemon logs each at start.
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("notes")
        for name in ("allowed_scopes", "spec_signers", "live_specs"):
            d[name] = list(getattr(self, name))
        d["triggers"] = [t.to_dict() for t in self.triggers]
        return {"version": 1, **d}

    @classmethod
    def from_dict(cls, data: object, where: str) -> Policy:
        if not isinstance(data, dict):
            raise PolicyError(f"policy {where}: expected a JSON object")
        known = {"version", *cls.__dataclass_fields__} - {"notes"}
        extra = sorted(set(data) - known)
        if extra:
            raise PolicyError(f"policy {where}: unknown field(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")
        base = cls()
        scopes = data.get("allowed_scopes", list(base.allowed_scopes))
        if not isinstance(scopes, list) or not all(
            isinstance(s, str) and ((is_scope(s) and spec_of(s) is None) or s in DEPRECATED_SCOPES) for s in scopes
        ):
            raise PolicyError(
                f"policy {where}: allowed_scopes must be a list of {', '.join(SCOPES)}, plugin:<name>; got {scopes!r}"
            )
        notes = tuple(
            f"policy {where}: allowed_scopes: {DEPRECATED_SCOPES[s]}" for s in scopes if s in DEPRECATED_SCOPES
        )
        scopes = [s for s in scopes if s not in DEPRECATED_SCOPES]
        signers = check_spec_signers(data.get("spec_signers", []))
        if signers is None:
            raise PolicyError(f"policy {where}: spec_signers must be a list of key fingerprints sha256:<64 hex>")
        live_specs = check_live_specs(data.get("live_specs", []))
        if live_specs is None:
            raise PolicyError(f"policy {where}: live_specs must be a list of spec names or sha256:<64 hex>/*")

        def number(name: str, minimum: int) -> int:
            value = data.get(name, getattr(base, name))
            maximum = LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
                raise PolicyError(
                    f"policy {where}: {name} must be an integer >= {minimum} and <= {maximum}; got {_shown(value)}"
                )
            return value

        core_files = data.get("crash_core_files", base.crash_core_files)
        if not isinstance(core_files, bool):
            raise PolicyError(f"policy {where}: crash_core_files must be true or false; got {_shown(core_files)}")
        profile = data.get("profile", base.profile)
        if profile not in PROFILE_NAMES:
            raise PolicyError(f"policy {where}: profile must be one of {', '.join(PROFILE_NAMES)}; got {profile!r}")
        allowed = tuple(dict.fromkeys(scopes))
        try:
            triggers = parse_triggers(data.get("triggers", []), allowed, where)
        except PolicyError:
            raise
        except CasefileError as exc:
            raise PolicyError(str(exc)) from None
        return cls(
            allowed_scopes=allowed,
            max_logs_window_s=number("max_logs_window_s", 0),
            rate_limit_per_hour=number("rate_limit_per_hour", 0),
            profile=str(profile),
            spool_max_bytes=number("spool_max_bytes", 0),
            spool_max_bundles=number("spool_max_bundles", 0),
            recorder_interval_s=number("recorder_interval_s", 0),
            recorder_fine_s=number("recorder_fine_s", 0),
            recorder_retention_s=number("recorder_retention_s", 0),
            recorder_max_bytes=number("recorder_max_bytes", 0),
            triggers=triggers,
            triggers_max_per_hour=number("triggers_max_per_hour", 0),
            crash_core_files=core_files,
            crash_core_max_bytes=number("crash_core_max_bytes", 0),
            spec_signers=signers,
            live_specs=live_specs,
            notes=notes,
        )

    def collector_options(self) -> dict[str, bool | int]:
        """What the policy tells the collectors of every live or triggered collection."""
        return {"coredump_files": self.crash_core_files, "coredump_max_bytes": self.crash_core_max_bytes}

    @property
    def recorder_on(self) -> bool:
        return bool(self.recorder_interval_s and self.recorder_retention_s and self.recorder_max_bytes)

    @property
    def triggers_on(self) -> bool:
        return bool(self.recorder_on and self.triggers and self.triggers_max_per_hour)

    def recorder_settings(self) -> RecorderSettings:
        return RecorderSettings(
            float(self.recorder_interval_s or 10),
            self.recorder_fine_s,
            self.recorder_retention_s,
            self.recorder_max_bytes,
        )

    def logs_window(self, since_s: int) -> int:
        """The window a request's logs are collected over: what it asked for, or the
        policy's maximum when it asked for none (0)."""
        return since_s or self.max_logs_window_s

    def denial(self, scopes: tuple[str, ...], since_s: int, accepted_last_hour: int) -> str | None:
        """The rule a request breaks, or None when the policy allows it.

        A ``spec:`` scope is judged by the spec's signature and ``live_specs`` once the
        spec is verified (``agent.daemon.service``); here only one is allowed per request,
        and a spec reads logs like a plugin does: within ``max_logs_window_s``.
        """
        if sum(spec_of(s) is not None for s in scopes) > 1:
            return "a request may name one collection spec"
        for scope in scopes:
            if scope in DEPRECATED_SCOPES:
                return DEPRECATED_SCOPES[scope]
            if not is_scope(scope):
                return f"unknown scope {scope[:100]!r}"
            if spec_of(scope) is not None:
                if not self.spec_signers:
                    return "no collection specs are trusted here (spec_signers is empty)"
                continue
            if scope not in self.allowed_scopes:
                return f"scope {scope!r} is not allowed (allowed: {', '.join(self.allowed_scopes) or 'none'})"
        if since_s < 0:
            return f"logs window {since_s} s is negative"
        if reads_logs(scopes):
            if self.max_logs_window_s == 0:
                return "max_logs_window_s is 0: no logs are collected"
            window = self.logs_window(since_s)
            if window > self.max_logs_window_s:
                return f"logs window {window} s exceeds max_logs_window_s {self.max_logs_window_s}"
        if self.rate_limit_per_hour and accepted_last_hour >= self.rate_limit_per_hour:
            return f"rate limit of {self.rate_limit_per_hour} requests per hour reached"
        return None


DEFAULT_POLICY = Policy()


def _shown(value: object) -> str:
    """A refused value, short: an integer of thousands of digits cannot even be printed."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def load_policy(home: Path) -> Policy:
    """Read ``<home>/policy.json``; write the default there first if it is missing."""
    path = home / "policy.json"
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(DEFAULT_POLICY.to_dict(), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
        return DEFAULT_POLICY
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"policy {path} is not valid JSON: {exc}") from None
    return Policy.from_dict(data, str(path))
