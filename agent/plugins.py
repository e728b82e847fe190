"""The one entry-point loader behind both plugin registries.

Collectors (``casefile.collectors``, ``agent.collect.registry``) and analysis rules
(``casefile.analyzers``, ``agent.analysis.findings``) are found the same way: every entry
point of the group, in name order, is loaded and its declarations checked by the
registry's own ``problems`` function. A plugin that fails to import (any exception, even
``SystemExit``), or loads as something declared wrongly, or claims a name already taken,
becomes a :class:`BrokenPlugin` with the entry point's name and the error: each registry
reports it in its own way (a collector's ERROR status, an ``analyzer-error`` finding),
and a run never crashes on it.

This module imports nothing of the agent, so both registries sit above it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_ERROR_CHARS", "BrokenPlugin", "describe_exception", "load_plugins", "truncate_error"]

# What one plugin's error may take of a status or a finding: enough for a traceback's
# last line, not a megabyte of repr from a hostile plugin.
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that did not load as a sound plugin."""

    name: str  # the entry point's name
    error: str


def truncate_error(text: str) -> str:
    """``text`` cut to :data:`MAX_ERROR_CHARS` (an ellipsis marks the cut)."""
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def describe_exception(exc: BaseException) -> str:
    """``ExcType: message`` (just ``ExcType`` when there is none), cut to the error length."""
    text = str(exc)
    return truncate_error(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def load_plugins(
    group: str,
    problems: Callable[[object], list[str]],
    *,
    key: Callable[[Any], str] | None = None,
    key_label: str = "name",
    taken: Collection[str] = (),
) -> tuple[list[Any], list[BrokenPlugin]]:
    """The sound plugins of ``group`` and the broken ones, in entry-point name order.

    ``problems(obj)`` says what is wrong with a loaded object (empty: sound). With
    ``key``, a plugin whose ``key(obj)`` is in ``taken`` or was claimed by an earlier
    plugin is broken too; without it, name clashes are the registry's to judge.
    """
    from importlib.metadata import entry_points  # scanning distributions: only when asked

    claimed = set(taken)
    plugins: list[Any] = []
    broken: list[BrokenPlugin] = []
    for ep in sorted(entry_points(group=group), key=lambda e: (e.name, e.value)):
        try:
            obj = ep.load()
        except (Exception, SystemExit) as exc:  # a broken plugin is an entry, never a crash
            error = f"plugin {ep.value!r} failed to load: {describe_exception(exc)}"
            broken.append(BrokenPlugin(ep.name, truncate_error(error)))
            continue
        found = problems(obj)
        if not found and key is not None and key(obj) in claimed:
            found = [f"{key_label} {key(obj)!r} is already taken"]
        if found:
            error = f"plugin {ep.value!r} is declared wrongly: {'; '.join(found)}"
            broken.append(BrokenPlugin(ep.name, truncate_error(error)))
            continue
        if key is not None:
            claimed.add(key(obj))
        plugins.append(obj)
    return plugins, broken
