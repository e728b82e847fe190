"""The single file from ``make dist``: it runs, names its build, and a bundle it makes
verifies, reports and uploads to a real collector on loopback — also from a minimal
Debian root without Python (``chroot``), when ``CASEFILE_DEBIAN_ROOT`` names one.

Run by ``make test-dist`` (which builds the file first); skipped elsewhere when the
file is not built.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.version import __version__
from tests.e2e.test_cli import cli, served

__all__ = ["served"]  # the collector fixture, shared with test_cli

ROOT = Path(__file__).resolve().parents[2]
SINGLE = ROOT / "dist" / f"casefile-{__version__}-linux-{platform.machine()}"

pytestmark = pytest.mark.skipif(not SINGLE.exists(), reason=f"{SINGLE.name} not built: run `make test-dist`")


def run(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [*prefix, *args], env={**os.environ, **(env or {})}, text=True, capture_output=True, timeout=180
    )
    assert res.returncode == 0, f"{args} exited {res.returncode}\nstdout:{res.stdout}\nstderr:{res.stderr}"
    return res


def test_version_names_the_version_and_the_build() -> None:
    line = run(str(SINGLE), "--version").stdout.strip()
    assert line.startswith(f"casefile {__version__} (single file {SINGLE.name}, commit "), line
    assert "needs glibc >= " in line, line


def test_the_service_runs_under_either_name(tmp_path: Path) -> None:
    link = tmp_path / "casefile-agent"
    link.symlink_to(SINGLE)
    assert "casefile-agent" in run(str(link), "--help").stdout
    assert "casefile-agent" in run(str(SINGLE), "agent-service", "--help").stdout


def _case_token(data: str) -> str:
    return cli("casefile-collector", "token", "create", "--kind", "case", "--case", "SR-7", "-q",
               env={"CASEFILE_DATA_DIR": data}).stdout.strip()  # fmt: skip


def _collect_verify_report_upload(
    served: dict[str, str], workdir: Path, shown_as: Path, base: str, prefix: tuple[str, ...] = ()
) -> None:
    """``shown_as``, ``base``: the file's path and a work folder as the command sees them."""
    home, out = f"{base}/cf-home", f"{base}/cf-out"
    argv = ["collect", "--case", "SR-7", "-o", out, "--home", home, "--json", "--upload", served["addr"],
            "--ca-fingerprint", served["fp"], "--token", _case_token(served["data"]), "--yes"]  # fmt: skip
    made = json.loads(run(str(shown_as), *argv, prefix=prefix).stdout)
    bundle = made["bundle"]["path"]
    assert made["upload"]["sha256"] == made["bundle"]["sha256"], made["upload"]  # the collector's receipt
    run(str(shown_as), "verify", bundle, prefix=prefix)
    report = subprocess.run([*prefix, str(shown_as), "report", bundle], text=True, capture_output=True, timeout=180)
    assert report.returncode in (0, 10, 20), report.stderr
    assert report.stdout.strip(), report.stderr
    # The installed verifier agrees with what the single file sealed.
    cli("casefile", "verify", str(workdir / bundle.lstrip("/")) if prefix else bundle)
    # Sealed for the vendor (age, through pyrage inside the file): the file says what it is
    # (exit 5), and the collector opens and files it like any bundle.
    recipient = cli("casefile-collector", "recipient", env={"CASEFILE_DATA_DIR": served["data"]}).stdout.strip()
    argv = ["collect", "--case", "SR-7", "--only", "host", "-o", f"{base}/cf-sealed", "--home", home, "--json",
            "--encrypt-to", recipient]  # fmt: skip
    sealed = json.loads(run(str(shown_as), *argv, prefix=prefix).stdout)["bundle"]
    assert sealed["path"].endswith(".tar.zst.age"), sealed
    said = subprocess.run([*prefix, str(shown_as), "verify", sealed["path"]], text=True, capture_output=True,
                          timeout=180)  # fmt: skip
    assert said.returncode == 5 and "age-encrypted" in " ".join(said.stderr.split()), said.stderr
    here = str(workdir / sealed["path"].lstrip("/")) if prefix else sealed["path"]
    data_env = {"CASEFILE_DATA_DIR": served["data"]}
    rows = json.loads(cli("casefile-collector", "import", here, "--json", env=data_env).stdout)
    assert rows[0]["bundle_id"] == sealed["bundle_id"] and rows[0]["state"] == "stored", rows


def test_collect_verify_report_upload_here(served: dict[str, str], tmp_path: Path) -> None:
    _collect_verify_report_upload(served, Path("/"), SINGLE, str(tmp_path))


@pytest.fixture
def debian_root() -> Iterator[Path]:
    where = os.environ.get("CASEFILE_DEBIAN_ROOT", "")
    if not where or not Path(where, "bin/sh").exists():
        pytest.skip("no minimal Debian root: set CASEFILE_DEBIAN_ROOT (see `make test-dist`)")
    root = Path(where)
    if shutil.which("python3", path=str(root / "usr/bin")) or (root / "usr/bin/python3").exists():
        pytest.fail(f"{root} has a Python: the test is for a root without one")
    (root / "proc").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


def test_collect_verify_report_upload_in_a_debian_root_without_python(
    served: dict[str, str], debian_root: Path
) -> None:
    inside = debian_root / "opt" / SINGLE.name
    inside.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(SINGLE, inside)
    for d in ("tmp/cf-home", "tmp/cf-out", "tmp/cf-sealed"):
        shutil.rmtree(debian_root / d, ignore_errors=True)
    _collect_verify_report_upload(
        served, debian_root, Path("/opt") / SINGLE.name, "/tmp", prefix=("chroot", str(debian_root))
    )
