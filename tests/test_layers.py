"""The house's layers: no import circles, and the collector does not load the agent's daemon.

A circle between modules hides behind a function-level import (``from x import y`` inside
a function, to dodge the partially initialised module): it works until someone moves the
import to the top. The graph here is built from the source with ``ast`` and counts every
import the module executes — at module level *and* inside functions — but not those
under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "collector")


def _modules(packages: Iterable[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports when it runs."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if sub in known:
                    out.add(sub)  # ``from package import module``
                elif module in known:
                    out.add(module)
        visit(node)

    visit(ast.parse(path.read_text("utf-8"), str(path)))
    out.discard(name)
    return out


def import_cycles(packages: Iterable[str]) -> list[list[str]]:
    """Every set of modules that import each other in a circle (Tarjan's strongly
    connected components of more than one module)."""
    modules = _modules(packages)
    graph = {name: sorted(_imports(name, path, set(modules))) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for v in graph:
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)
    return cycles


def test_agent_and_collector_have_no_import_cycles() -> None:
    assert import_cycles(PACKAGES) == []


def test_the_cycle_finder_sees_a_function_level_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check would pass vacuously if it missed imports inside functions."""
    pkg = tmp_path / "circle"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circle.b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from circle.a import f\n    return f\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from circle.a import f\n")
    (pkg / "d.py").write_text("from . import c\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert import_cycles(["circle"]) == [["circle.a", "circle.b"]]


def test_the_collector_server_does_not_load_the_agent_daemon_or_h2() -> None:
    """The collector checks a Channel signature with ``agent.transport.channel_proof``; it
    once imported ``agent.daemon.protocol`` for it, loading the whole daemon and h2."""
    code = "import json, sys, collector.server, collector.cli; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = json.loads(out.stdout)
    assert "collector.services.channel" in loaded  # the check below means something
    leaked = [m for m in loaded if m in ("agent.daemon", "h2") or m.startswith(("agent.daemon.", "h2."))]
    assert leaked == []


MAX_MODULE_LINES = 400


def test_no_module_is_over_400_lines() -> None:
    """A module that grows past this is doing two things: split it along what it does
    (generated protobuf modules excepted)."""
    long = {
        name: n
        for name, path in _modules((*PACKAGES, "plugins")).items()
        if not path.name.endswith(("_pb2.py", "_pb2_grpc.py"))
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"over {MAX_MODULE_LINES} lines: {long}"
