"""Collection: declarative collectors, their registry, and the concurrent runner.

Plugins import only from here::

    from agent.collect import Collector, CollectContext

and register their class under the ``casefile.collectors`` entry point group.
"""

from __future__ import annotations

from agent.collect.framework import (
    ALL_PLATFORMS,
    ENTRY_POINT_GROUP,
    KNOWN_PLATFORMS,
    Artifact,
    BrokenPlugin,
    CollectContext,
    CollectionResult,
    CollectionSpec,
    Collector,
    OptionValue,
    Pending,
    Registry,
    current_platform,
    declaration_problems,
    registered_collectors,
    run_collection,
    statuses_to_dicts,
)

__all__ = [
    "ALL_PLATFORMS",
    "ENTRY_POINT_GROUP",
    "KNOWN_PLATFORMS",
    "Artifact",
    "BrokenPlugin",
    "CollectContext",
    "CollectionResult",
    "CollectionSpec",
    "Collector",
    "OptionValue",
    "Pending",
    "Registry",
    "current_platform",
    "declaration_problems",
    "registered_collectors",
    "run_collection",
    "statuses_to_dicts",
]
