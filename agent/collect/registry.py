"""The collector registry: built-ins plus plugins from the ``casefile.collectors`` entry points.

Declarations are checked once here, so the runner can trust every class it is given; a
plugin that fails to load or is declared wrongly becomes a ``BrokenPlugin`` (from the one
entry-point loader, ``agent.plugins``) that reports as ERROR in every run, never a crash.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from agent.collect.framework import Collector, declaration_problems
from agent.collect.options import AnyOption, BoolOption
from agent.errors import CollectionError
from agent.plugins import BrokenPlugin, load_plugins

__all__ = [
    "ENTRY_POINT_GROUP",
    "RUNNER_OPTIONS",
    "BrokenPlugin",
    "Registry",
    "build_registry",
    "registered_collectors",
]


ENTRY_POINT_GROUP = "casefile.collectors"
# Options the runner reads itself, not a collector.
LOWER_PRIORITY = BoolOption(
    "lower_priority", True, "the run lowers its CPU and I/O priority (nice, ionice idle) before collecting"
)
RUNNER_OPTIONS: tuple[AnyOption, ...] = (LOWER_PRIORITY,)


@dataclass(frozen=True)
class Registry:
    collectors: tuple[type[Collector], ...]
    broken: tuple[BrokenPlugin, ...] = ()

    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.collectors) + tuple(b.name for b in self.broken)

    def options(self) -> dict[str, AnyOption]:
        """Every declared option by name: the runner's, then each collector's in order."""
        return {opt.name: opt for opt, _ in declared_options(self.collectors).values()}


def declared_options(collectors: Iterable[type[Collector]]) -> dict[str, tuple[AnyOption, tuple[str, ...]]]:
    """name -> (the declaration, the collectors that read it; "" for the runner), in order.

    One name must mean one declaration: collectors that share an option (the log window)
    list the same declaration object, or an equal one; anything else is a CollectionError.
    """
    found: dict[str, tuple[AnyOption, tuple[str, ...]]] = {opt.name: (opt, ("",)) for opt in RUNNER_OPTIONS}
    for cls in collectors:
        for opt in cls.options:
            if opt.name in found:
                known, readers = found[opt.name]
                if known != opt:
                    first = readers[0] or "the runner"
                    raise CollectionError(
                        f"option {opt.name!r} is declared differently by {first!r} and {cls.name!r}: "
                        f"{known!r} / {opt!r}"
                    )
                found[opt.name] = (known, (*readers, cls.name))
            else:
                found[opt.name] = (opt, (cls.name,))
    return found


def build_registry(collectors: Iterable[type[Collector]], broken: Iterable[BrokenPlugin] = ()) -> Registry:
    """Check declarations and uniqueness; any problem is a CollectionError naming it."""
    classes, broken = tuple(collectors), tuple(broken)
    for cls in classes:
        problems = declaration_problems(cls)
        if problems:
            raise CollectionError(f"collector {cls!r} is declared wrongly: {'; '.join(problems)}")
    seen: dict[str, str] = {}
    fields: dict[str, str] = {}
    for name, origin, facts_field in [
        *((c.name, f"{c.__module__}.{c.__qualname__}", c.facts_field) for c in classes),
        *((b.name, f"entry point {b.name!r}", None) for b in broken),
    ]:
        if name in seen:
            raise CollectionError(f"two collectors are named {name!r}: {seen[name]} and {origin}")
        seen[name] = origin
        if facts_field is not None:
            if facts_field in fields:
                other = fields[facts_field]
                raise CollectionError(f"{other!r} and {name!r} both fill Snapshot.{facts_field}")
            fields[facts_field] = name
    declared_options(classes)  # one name, one declaration
    return Registry(classes, broken)


_registry_lock = threading.Lock()
_registry: Registry | None = None


def registered_collectors(*, refresh: bool = False) -> Registry:
    """Built-in collectors plus plugins from the ``casefile.collectors`` entry points.

    Loaded on first use and cached (scanning installed distributions costs milliseconds
    a live snapshot should not pay each time); ``refresh=True`` scans again.
    """
    global _registry
    with _registry_lock:
        if _registry is None or refresh:
            from agent.collect.builtin import BUILTIN_COLLECTORS

            plugins, broken = _load_plugins()
            _registry = build_registry((*BUILTIN_COLLECTORS, *plugins), broken)
        return _registry


def _load_plugins() -> tuple[list[type[Collector]], list[BrokenPlugin]]:
    # Name clashes are build_registry's to judge: a plugin taking a built-in's name is a
    # CollectionError naming both, not a silently broken entry. A plugin that declares an
    # option already declared otherwise (by a built-in or an earlier plugin) is broken:
    # it is reported as ERROR, and the others' options keep their meaning.
    from agent.collect.builtin import BUILTIN_COLLECTORS

    accepted: list[type[Collector]] = list(BUILTIN_COLLECTORS)

    def problems(obj: object) -> list[str]:
        found = declaration_problems(obj)
        if not found and isinstance(obj, type) and issubclass(obj, Collector):
            try:
                declared_options((*accepted, obj))
            except CollectionError as exc:
                return [str(exc)]
            accepted.append(obj)
        return found

    return load_plugins(ENTRY_POINT_GROUP, problems)
