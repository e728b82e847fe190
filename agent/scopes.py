"""Live snapshot scopes: the one table the collector and the agent both read.

An engineer names scopes; the customer's ``policy.json`` lists the ones this machine
allows (``allowed_scopes``); the agent collects only those. The collector imports this
module to check a request's scope names before queuing it, so both sides agree on them.

Built-in scopes and what they collect (``SCOPE_COLLECTORS``): ``facts`` — host, CPU,
memory, disks, network, processes, services, network depth, clock, time series (no
logs); ``logs`` — system logs within the policy's logs window; ``fragmentation`` — the
sampled fragmentation scan; ``crashes`` — crash artefacts (systemd-coredump entries,
metadata only; the kernel's pstore and the previous boot's oops/panic lines; the
``/var/crash`` listing); ``commands`` — raw command output (reserved: no built-in
collector emits it yet, so it adds nothing, but it is still allowed or denied).

A plugin collector (entry point group ``casefile.collectors``) runs in a live snapshot
only under its own scope, ``plugin:<name>`` (``plugin:pgsql`` for casefile-pgsql): a
plugin installed later must never widen what an existing policy allows, so no built-in
scope and no wildcard covers one; the policy lists each by name.
"""

from __future__ import annotations

import re

__all__ = [
    "PLUGIN_PREFIX",
    "SCOPES",
    "SCOPE_COLLECTORS",
    "collectors_for",
    "is_scope",
    "plugin_of",
    "reads_logs",
    "scope_names",
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
    "commands": (),
}
SCOPES = tuple(SCOPE_COLLECTORS)
PLUGIN_PREFIX = "plugin:"

# A collector name as the framework accepts one (lowercase, digits, _ and -).
_PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")


def plugin_of(scope: str) -> str | None:
    """The plugin collector a ``plugin:<name>`` scope names, else None."""
    if not scope.startswith(PLUGIN_PREFIX):
        return None
    name = scope[len(PLUGIN_PREFIX) :]
    return name if _PLUGIN_NAME.fullmatch(name) and name not in _BUILTIN_COLLECTORS else None


def is_scope(scope: str) -> bool:
    """A built-in scope or a well-formed plugin scope."""
    return scope in SCOPE_COLLECTORS or plugin_of(scope) is not None


def reads_logs(scopes: tuple[str, ...]) -> bool:
    """Whether these scopes read logs (``logs``, or a plugin's own): the policy's logs
    window bounds them all."""
    return "logs" in scopes or any(plugin_of(s) is not None for s in scopes)


def scope_names() -> str:
    """The scopes in words, for error messages."""
    return ", ".join(SCOPES) + f", {PLUGIN_PREFIX}<name>"


def collectors_for(scopes: tuple[str, ...]) -> tuple[str, ...]:
    """The collectors a live snapshot of ``scopes`` runs, "host" always first."""
    names: dict[str, None] = {}
    for scope in scopes:
        plugin = plugin_of(scope)
        names.update(dict.fromkeys((plugin,) if plugin else SCOPE_COLLECTORS.get(scope, ())))
    # "host" always: a bundle without it cannot be filed under its machine.
    return ("host", *(n for n in names if n != "host"))


_BUILTIN_COLLECTORS = frozenset(n for names in SCOPE_COLLECTORS.values() for n in names)
