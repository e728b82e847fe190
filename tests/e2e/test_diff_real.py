"""``casefile diff`` of two real ``casefile collect`` runs of this machine.

A CPU hog started between the two collections must show with its CPU %; an unchanged
machine must show no change. The second check runs both collections in their own PID
and network namespaces (``unshare``, root only): processes that other programs on a
shared machine start or end between the two runs, and the ports they open, are real
changes, not noise, and would make the check say nothing about noise. CPU, load,
memory, disks and fragmentation are the host's own, as busy as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.test_cli import BIN, cli

MARK = "casefile-diff-hog"
# Bounded in time by itself too, should the test be killed before its finally.
HOG = f"import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass  # {MARK}"


# The default scope and sampling; only the processes collector's time budget is raised, so that on a
# machine loaded far beyond its cores (where the agent, at lowered priority, waits its turn) it finishes.
BUDGET = ("--budget", "processes=20")


def _collect(out: Path, home: Path) -> Path:
    res = cli("casefile", "collect", "--output", str(out), "--json", *BUDGET, env={"CASEFILE_HOME": str(home)})
    return Path(json.loads(res.stdout)["bundle"]["path"])


def _top(bundle: Path) -> list[tuple[str, float, bool]]:
    """The top-CPU list a bundle holds, for a failure's message."""
    from agent.analysis import BundleView

    return [(p.cmdline[:60], p.cpu_percent, p.agent) for p in BundleView.from_file(bundle).snapshot.processes.top_cpu]


def _diff(a: Path, b: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(cli("casefile", "diff", str(a), str(b), "--json").stdout)
    return doc


def test_cpu_hog_started_between_two_collections_shows_with_its_cpu(tmp_path: Path) -> None:
    a = _collect(tmp_path / "a", tmp_path / "home")
    # Two workers of one job, as a parallel build would start. On a machine whose cores other work
    # already fills (a shared test machine: load 12 on 2 cores), a spinning process at normal priority
    # gets a share like everyone else's and is no hog at all; a little above the rest (nice -3: twice
    # a normal process's weight), it is one, without starving the agent (which lowers its own priority).
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2)]
    try:
        for h in hogs:
            with contextlib.suppress(psutil.AccessDenied):  # not root: it stays a fair-share spinner
                psutil.Process(h.pid).nice(-3)
        time.sleep(0.5)
        b = _collect(tmp_path / "b", tmp_path / "home")
        assert all(h.poll() is None for h in hogs), "the hog ran through the second collection"
    finally:
        for h in hogs:
            h.kill()
            h.wait(10)
    procs = _diff(a, b)["sections"]["processes"]
    assert procs["not_compared"] == []
    hog_keys = [k for k in procs["added"] if MARK in k]
    assert len(hog_keys) == 1, (json.dumps(procs, indent=1), _top(b))
    key = hog_keys[0]
    assert key.startswith(f"{sys.executable} -c import time")  # keyed by command line, not "python3"
    assert procs["values"][key]["cpu_percent"] >= 10.0
    assert procs["values"][key]["count"] == 2
    text = cli("casefile", "diff", str(a), str(b)).stdout
    (line,) = [line for line in text.splitlines() if line.startswith("  + new:") and "-c import time" in line]
    assert "% CPU" in line and "count 2" in line


_DRIVER = r"""
import json, subprocess, sys, time
out, home = sys.argv[1], sys.argv[2]
# A steady machine: a service holding memory and one waking up 20 times a second.
steady = [
    subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(80 << 20); time.sleep(120)"]),
    subprocess.Popen([sys.executable, "-c",
        "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end:\n"
        "    t = time.monotonic()\n    while time.monotonic() - t < 0.005: pass\n    time.sleep(0.045)"]),
]
# Other programs' scratch filesystems under /tmp (test mounts that fill and vanish) are real changes
# of the machine, not noise: out of view in this mount namespace (the host keeps them).
for line in open("/proc/self/mounts").read().splitlines():
    mp = line.split()[1]
    if mp.startswith("/tmp/"):
        subprocess.run(["umount", "-l", mp], capture_output=True)
time.sleep(0.5)
try:
    paths = []
    for name in ("a", "b"):
        res = subprocess.run([sys.argv[3], "collect", "--output", f"{out}/{name}", "--json",
                              "--budget", "processes=20"], capture_output=True,
                             text=True, timeout=120, env={"CASEFILE_HOME": home, "PATH": "/usr/bin:/bin"})
        if res.returncode:
            sys.exit(f"collect exited {res.returncode}: {res.stderr}")
        paths.append(json.loads(res.stdout)["bundle"]["path"])
    print(json.dumps(paths))
finally:
    for p in steady:
        p.kill()
"""


def _isolated() -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) for PID and network namespaces"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--net", "true"], capture_output=True)
    return None if probe.returncode == 0 else f"unshare refused: {probe.stderr.decode(errors='replace').strip()}"


_NOT_ISOLATED = _isolated()


@pytest.mark.skipif(_NOT_ISOLATED is not None, reason=str(_NOT_ISOLATED))
def test_two_back_to_back_collections_of_an_unchanged_machine_show_no_change(tmp_path: Path) -> None:
    res = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--net", sys.executable, "-c", _DRIVER,
         str(tmp_path), str(tmp_path / "home"), str(BIN / "casefile")],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    a, b = (Path(p) for p in json.loads(res.stdout))
    doc = _diff(a, b)
    text = cli("casefile", "diff", str(a), str(b)).stdout
    changes = {name: s for name, s in doc["sections"].items() if s["added"] or s["removed"] or s["changed"]}
    assert changes == {}, text
    assert "no differences" in text
    # Compared, not skipped: only what a collector could not do (e.g. a fragmentation walk cut by its budget)
    # may be "not compared", never the processes, CPU, load, memory or swap.
    for name in ("cpu", "load", "memory", "swap", "processes", "filesystems"):
        assert doc["sections"][name]["not_compared"] == [], text
