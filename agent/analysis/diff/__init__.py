"""Compare two bundles of the same host, fact by fact.

Each section compares keyed items (mounts by mount point, processes by command line,
ports by protocol/address/port, ...) and reports what was added, removed or changed:
CPU, load, memory and swap with before -> after values, used space with the sizes
beside the percentages. A figure is only called changed when the difference is beyond
its noise (``model.tolerance``): a sampled figure's standard error, and the smallest
change worth a reader's time. What one bundle did not collect is "not compared",
never "removed" or "resolved" (``coverage``).
"""

from __future__ import annotations

from agent.analysis.diff.core import diff_bundles
from agent.analysis.diff.model import Change, DiffResult, DiffSection, Measure, NotCompared
from agent.analysis.diff.render import render_diff_text

__all__ = ["Change", "DiffResult", "DiffSection", "Measure", "NotCompared", "diff_bundles", "render_diff_text"]
