"""A spec run adds the spec's collector to the run's registry; it does not replace it: a
broken plugin is reported as in a run without ``--spec``, one-shot and live."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from agent.collect import ENTRY_POINT_GROUP, CollectionSpec, registered_collectors
from agent.daemon.execute import start_spec_collection
from agent.keys import SigningKey
from agent.specs import sign_spec
from protos import facts_pb2

Status = facts_pb2.CollectorStatus

BIN = Path(sys.executable).parent
BROKEN = "casefile_spec_test_broken"


def _install_broken(root: Path) -> None:
    """A real installed distribution whose entry point names a module that does not exist."""
    info = root / f"{BROKEN}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {BROKEN}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbrokenplug = {BROKEN}_missing:Thing\n")


@pytest.fixture
def broken_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "site"
    _install_broken(root)
    monkeypatch.syspath_prepend(str(root))
    registered_collectors(refresh=True)
    yield root
    monkeypatch.undo()
    registered_collectors(refresh=True)


def _others(*keep: str) -> list[str]:
    registry = registered_collectors(refresh=True)
    return [c.name for c in registry.collectors if c.name not in keep]


def test_collect_spec_still_reports_a_broken_plugin(broken_path: Path, tmp_path: Path) -> None:
    exclude = ",".join(_others("host"))
    res = subprocess.run(
        [str(BIN / "casefile"), "collect", "--spec", "systemd", "--exclude", exclude, "--json",
         "--home", str(tmp_path / "home"), "-o", str(tmp_path / "out")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(broken_path), os.environ.get("PYTHONPATH", "")])},
        text=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    statuses = {c["name"]: c for c in json.loads(res.stdout)["collectors"]}
    assert statuses["spec_systemd"]["status"] == "ok"
    assert statuses["host"]["status"] == "ok"
    assert statuses["brokenplug"]["status"] == "error"
    assert "ModuleNotFoundError" in statuses["brokenplug"]["error"]


def test_a_live_spec_run_keeps_the_registry(broken_path: Path) -> None:
    key = SigningKey.generate()
    text = (resources.files("agent.specs") / "builtin" / "systemd.yaml").read_text("utf-8")
    envelope = sign_spec(text, key, valid_for=dt.timedelta(days=1))
    running = start_spec_collection(CollectionSpec(only=("host",)), envelope, (key.fingerprint,))
    with running.wait() as result:
        states = {s.name: s for s in result.statuses}
    assert states["spec_systemd"].state == states["host"].state == Status.OK
    # Not selected by the live scope, but listed, as in a live run without a spec.
    assert states["brokenplug"].error == "not selected by the collection spec"
    assert {c.name for c in registered_collectors().collectors} <= set(states)
