"""The systemd unit (agent/casefile-agent.service) as shipped: it parses, runs the
service entry point the README installs, and — where this machine has
``systemd-analyze`` — verifies with ExecStart pointing at the installed ``casefile-agent``
(the single file's symlink is checked the same way in tests/dist)."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "agent" / "casefile-agent.service"
INSTALLED = "/usr/local/bin/casefile-agent"


def _parsed(text: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",), comment_prefixes=("#",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    return unit


def exec_start(text: str) -> list[str]:
    return shlex.split(_parsed(text)["Service"]["ExecStart"])


def verify_unit(where: Path, program: Path) -> None:
    """``systemd-analyze verify`` of the unit with ExecStart's program at ``program``."""
    text = UNIT.read_text()
    assert text.count(f"ExecStart={INSTALLED}") == 1
    unit = where / "casefile-agent.service"
    unit.write_text(text.replace(f"ExecStart={INSTALLED}", f"ExecStart={program}"))
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "casefile-agent.service" not in res.stderr, res.stderr  # no warning about the unit either


def test_the_unit_runs_the_service_confined() -> None:
    unit = _parsed(UNIT.read_text())
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv == [INSTALLED, "--home", "/var/lib/casefile"], argv
    assert service["StateDirectory"] == "casefile" and service["StateDirectoryMode"] == "0700"
    assert service["ReadWritePaths"] == "/var/lib/casefile"
    for confined in ("NoNewPrivileges", "PrivateTmp"):  # PrivateTmp: the single file unpacks itself there
        assert service[confined] == "yes"
    assert service["ProtectSystem"] == "strict" and service["UMask"] == "0077"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze on this machine")
def test_the_unit_verifies_with_the_installed_entry_point(tmp_path: Path) -> None:
    verify_unit(tmp_path, Path(sys.executable).parent / "casefile-agent")
