"""The customer's policy for live snapshots: ``<home>/policy.json``.

The machine's owner decides what engineers may ask for; the agent enforces it before
collecting anything, and answers a request outside it with ``denied`` and the detail
``denied by policy: <rule>`` (never silently). Written with these defaults on the
daemon's first start when missing; edit it and restart the service::

    {
      "version": 1,
      "allowed_scopes": ["facts"],      // of: facts, logs, fragmentation, commands
      "max_logs_window_s": 3600,        // largest --since an engineer may ask for logs
      "rate_limit_per_hour": 12,        // accepted requests per rolling hour (0: none)
      "profile": "standard",            // redaction: standard, private or facts-only
      "spool_max_bytes": 268435456,     // undeliverable bundles kept at most (256 MiB)
      "spool_max_bundles": 50           //   ... and at most this many
    }

Scopes and what they collect (``SCOPE_COLLECTORS``): ``facts`` — host, CPU, memory,
disks, network, processes, services, network depth, clock, time series (no logs);
``logs`` — system logs of at most ``max_logs_window_s``; ``fragmentation`` — the
sampled fragmentation scan; ``commands`` — raw command output (reserved: no built-in
collector emits it yet, so it adds nothing, but it is still allowed or denied here).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.errors import CasefileError

__all__ = [
    "DEFAULT_POLICY",
    "PROFILE_NAMES",
    "SCOPES",
    "SCOPE_COLLECTORS",
    "Policy",
    "PolicyError",
    "collectors_for",
    "load_policy",
]

SCOPE_COLLECTORS: dict[str, tuple[str, ...]] = {
    "facts": (
        "host",
        "cpu",
        "memory",
        "disks",
        "network",
        "processes",
        "services",
        "netdepth",
        "clock",
        "timeseries",
    ),
    "logs": ("logs",),
    "fragmentation": ("fragmentation",),
    "commands": (),
}
SCOPES = tuple(SCOPE_COLLECTORS)

# The names of ``agent.redact.PROFILES``, repeated so the resident daemon can check its
# policy without importing the redaction package (its rules and psutil); a test keeps
# the two equal.
PROFILE_NAMES = ("standard", "private", "facts-only")


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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["allowed_scopes"] = list(self.allowed_scopes)
        return {"version": 1, **d}

    @classmethod
    def from_dict(cls, data: object, where: str) -> Policy:
        if not isinstance(data, dict):
            raise PolicyError(f"policy {where}: expected a JSON object")
        known = {"version", *cls.__dataclass_fields__}
        extra = sorted(set(data) - known)
        if extra:
            raise PolicyError(f"policy {where}: unknown field(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")
        base = cls()
        scopes = data.get("allowed_scopes", list(base.allowed_scopes))
        if not isinstance(scopes, list) or not all(isinstance(s, str) and s in SCOPES for s in scopes):
            raise PolicyError(f"policy {where}: allowed_scopes must be a list of {', '.join(SCOPES)}; got {scopes!r}")

        def number(name: str, minimum: int) -> int:
            value = data.get(name, getattr(base, name))
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise PolicyError(f"policy {where}: {name} must be an integer >= {minimum}; got {value!r}")
            return value

        profile = data.get("profile", base.profile)
        if profile not in PROFILE_NAMES:
            raise PolicyError(f"policy {where}: profile must be one of {', '.join(PROFILE_NAMES)}; got {profile!r}")
        return cls(
            allowed_scopes=tuple(dict.fromkeys(scopes)),
            max_logs_window_s=number("max_logs_window_s", 0),
            rate_limit_per_hour=number("rate_limit_per_hour", 0),
            profile=str(profile),
            spool_max_bytes=number("spool_max_bytes", 0),
            spool_max_bundles=number("spool_max_bundles", 0),
        )

    def denial(self, scopes: tuple[str, ...], since_s: int, accepted_last_hour: int) -> str | None:
        """The rule a request breaks, or None when the policy allows it."""
        for scope in scopes:
            if scope not in SCOPES:
                return f"unknown scope {scope!r}"
            if scope not in self.allowed_scopes:
                return f"scope {scope!r} is not allowed (allowed: {', '.join(self.allowed_scopes) or 'none'})"
        if "logs" in scopes and since_s > self.max_logs_window_s:
            return f"logs window {since_s} s exceeds max_logs_window_s {self.max_logs_window_s}"
        if self.rate_limit_per_hour and accepted_last_hour >= self.rate_limit_per_hour:
            return f"rate limit of {self.rate_limit_per_hour} requests per hour reached"
        return None


DEFAULT_POLICY = Policy()


def collectors_for(scopes: tuple[str, ...]) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for scope in scopes:
        names.update(dict.fromkeys(SCOPE_COLLECTORS.get(scope, ())))
    # "host" always: a bundle without it cannot be filed under its machine.
    return ("host", *(n for n in names if n != "host"))


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
