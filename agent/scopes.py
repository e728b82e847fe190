"""Live snapshot scopes: the one table the collector and the agent both read.

An engineer names scopes; the customer's ``policy.json`` lists the ones this machine
allows (``allowed_scopes``); the agent collects only those. The collector imports this
module to check a request's scope names before queuing it, so both sides agree on them.

Built-in scopes and what they collect (``SCOPE_COLLECTORS``): ``facts`` — host, CPU,
memory, disks, network, processes, services, network depth, clock, time series (no
logs); ``logs`` — system logs within the policy's logs window; ``fragmentation`` — the
sampled fragmentation scan; ``crashes`` — crash artefacts (systemd-coredump entries,
metadata only; the kernel's pstore and the previous boot's oops/panic lines; the
``/var/crash`` listing). The former ``commands`` scope collected nothing and is gone:
commands run only from a signed collection spec (``agent.specs``), which a live request
names as the scope ``spec:<name>@<version>`` and the policy allows by its
``spec_signers`` and ``live_specs``, not by ``allowed_scopes``. An old policy that still
lists ``commands`` loads with a deprecation note (``DEPRECATED_SCOPES``).

A plugin collector (entry point group ``casefile.collectors``) runs in a live snapshot
only under its own scope, ``plugin:<name>`` (``plugin:pgsql`` for casefile-pgsql): a
plugin installed later must never widen what an existing policy allows, so no built-in
scope and no wildcard covers one; the policy lists each by name.
"""

from __future__ import annotations

import re

__all__ = [
    "DEPRECATED_SCOPES",
    "PLUGIN_PREFIX",
    "SCOPES",
    "SCOPE_COLLECTORS",
    "SPEC_PREFIX",
    "check_live_specs",
    "check_spec_signers",
    "collectors_for",
    "is_scope",
    "plugin_of",
    "reads_logs",
    "scope_names",
    "spec_allowed_live",
    "spec_of",
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
        "recorder",
    ),
    "logs": ("logs",),
    "fragmentation": ("fragmentation",),
    "crashes": ("coredumps", "kernel_crashes", "crash_files"),
}
# Scopes a policy may still list; they allow nothing, and loading says so.
DEPRECATED_SCOPES: dict[str, str] = {
    "commands": "the 'commands' scope collected nothing and was removed: commands run only from signed "
    "collection specs (policy fields spec_signers and live_specs; see docs/specs.md)",
}
SCOPES = tuple(SCOPE_COLLECTORS)
PLUGIN_PREFIX = "plugin:"
SPEC_PREFIX = "spec:"
_SPEC_SCOPE = re.compile(r"spec:([a-z][a-z0-9-]{0,39})@([1-9][0-9]{0,6})")

# A collector name as the framework accepts one (lowercase, digits, _ and -).
_PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")


def plugin_of(scope: str) -> str | None:
    """The plugin collector a ``plugin:<name>`` scope names, else None."""
    if not scope.startswith(PLUGIN_PREFIX):
        return None
    name = scope[len(PLUGIN_PREFIX) :]
    return name if _PLUGIN_NAME.fullmatch(name) and name not in _BUILTIN_COLLECTORS else None


def spec_of(scope: str) -> tuple[str, int] | None:
    """The spec and version a ``spec:<name>@<version>`` scope names, else None."""
    m = _SPEC_SCOPE.fullmatch(scope)
    return (m.group(1), int(m.group(2))) if m else None


def is_scope(scope: str) -> bool:
    """A built-in scope, a well-formed plugin scope or a spec scope."""
    return scope in SCOPE_COLLECTORS or plugin_of(scope) is not None or spec_of(scope) is not None


def reads_logs(scopes: tuple[str, ...]) -> bool:
    """Whether these scopes read logs (``logs``, a plugin's own, a spec's product logs):
    the policy's logs window bounds them all."""
    return "logs" in scopes or any(plugin_of(s) is not None or spec_of(s) is not None for s in scopes)


def scope_names() -> str:
    """The scopes in words, for error messages."""
    return ", ".join(SCOPES) + f", {PLUGIN_PREFIX}<name>, {SPEC_PREFIX}<name>@<version> (snapshot --spec)"


def collectors_for(scopes: tuple[str, ...]) -> tuple[str, ...]:
    """The collectors a live snapshot of ``scopes`` runs, "host" always first."""
    names: dict[str, None] = {}
    for scope in scopes:
        plugin = plugin_of(scope)
        names.update(dict.fromkeys((plugin,) if plugin else SCOPE_COLLECTORS.get(scope, ())))
    # "host" always: a bundle without it cannot be filed under its machine.
    return ("host", *(n for n in names if n != "host"))


_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_LIVE_ENTRY = re.compile(r"[a-z][a-z0-9-]{0,39}|sha256:[0-9a-f]{64}/\*")


def check_spec_signers(value: object) -> tuple[str, ...] | None:
    """A policy's ``spec_signers`` (key fingerprints ``sha256:<hex>``), or None if malformed."""
    if not isinstance(value, list) or not all(isinstance(v, str) and _FINGERPRINT.fullmatch(v) for v in value):
        return None
    return tuple(dict.fromkeys(value))


def check_live_specs(value: object) -> tuple[str, ...] | None:
    """A policy's ``live_specs`` (spec names, or ``sha256:<hex>/*`` for all of one signer), or None."""
    if not isinstance(value, list) or not all(isinstance(v, str) and _LIVE_ENTRY.fullmatch(v) for v in value):
        return None
    return tuple(dict.fromkeys(value))


def spec_allowed_live(name: str, signer: str, live_specs: tuple[str, ...]) -> str | None:
    """Why a verified spec may not run live under ``live_specs``, or None when it may."""
    if name in live_specs or f"{signer}/*" in live_specs:
        return None
    return f"spec {name!r} is not in live_specs (list it by name, or its signer as {signer}/*)"


_BUILTIN_COLLECTORS = frozenset(n for names in SCOPE_COLLECTORS.values() for n in names)
