"""Rich rendering of a snapshot summary, shared by ``casefile`` and ``casefile-collector``.

CLI only: the agent daemon and the core never import this module (it pulls in rich).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

__all__ = ["print_summary"]


def print_summary(console: Console, s: dict[str, Any]) -> None:
    """Host, CPU and memory lines, then disks, network and collector tables.

    ``s`` is :func:`agent.summary.snapshot_summary` output. Its strings come from the
    machine (a hostname, a mount point, an error message): escaped or Text, never markup.
    """
    h, c, m = s["host"], s["cpu"], s["memory"]
    console.print(
        f"[bold]{escape(str(h['hostname']))}[/] — {escape(str(h['os']))} (kernel {escape(str(h['kernel']))}, "
        f"{escape(str(h['arch']))}), up {h['uptime_h']} h, virtualization {escape(str(h['virtualization']))}"
    )
    console.print(
        f"CPU {c['percent']}% of {c['logical']} logical cores, load {' / '.join(map(str, c['load']))}; "
        f"memory {m['percent']}% of {m['total_gib']} GiB, swap {m['swap_percent']}% of {m['swap_total_gib']} GiB"
    )
    disks = Table("mount", "fs", "size GiB", "used %", title="Disks", title_justify="left")
    for d in s["disks"]:
        disks.add_row(Text(d["mountpoint"]), Text(d["fstype"]), str(d["total_gib"]),
                      Text(d.get("error") or str(d["percent"])))
    console.print(disks)
    nets = Table("interface", "up", "addresses", "errors", "drops", title="Network", title_justify="left")
    for n in s["network"]:
        nets.add_row(
            Text(n["name"]), "yes" if n["up"] else "no", Text(", ".join(n["addresses"])), str(n["errors"]),
            str(n["drops"]),
        )
    console.print(nets)
    cols = Table("collector", "status", "ms", "detail", title="Collectors", title_justify="left")
    for col in s["collectors"]:
        style = "green" if col["status"] == "ok" else "red"
        cols.add_row(Text(col["name"]), Text(col["status"], style=style), str(col["duration_ms"]),
                     Text(col.get("error", "")))
    console.print(cols)
