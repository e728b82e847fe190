"""Build the single file: ``dist/casefile-<version>-linux-x86_64`` (``make dist``).

PyInstaller one-file, from agent/single_file.py: the ``casefile`` command line and the
``casefile-agent`` service with every dependency and a Python of their own; the target
needs no Python. It links against the build machine's glibc, so it runs on that glibc
and newer: the stamp ``--version`` prints names it.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return out.stdout.strip()


_CJK_CODECS = ("_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw",
               "_multibytecodec")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from agent.version import __version__

    machine = platform.machine()
    name = f"casefile-{__version__}-linux-{machine}"
    libc, libc_version = platform.libc_ver()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%MZ")
    stamp = f"single file {name}, commit {_commit()}, built {when}, needs {libc or 'libc'} >= {libc_version}"
    with tempfile.TemporaryDirectory(prefix="casefile-dist-") as work:
        stamp_file = Path(work) / "casefile-build.txt"
        stamp_file.write_text(stamp + "\n", encoding="utf-8")
        cmd = [
            sys.executable, "-m", "PyInstaller", "--onefile", "--noconfirm", "--clean", "--log-level", "WARN",
            "--name", name, "--distpath", str(ROOT / "dist"), "--workpath", str(Path(work) / "build"),
            "--specpath", work, "--paths", str(ROOT),
            "--add-data", f"{stamp_file}{os.pathsep}.",
            # The collection specs shipped with the agent (casefile collect --spec postgresql).
            "--add-data", f"{ROOT / 'agent' / 'specs' / 'builtin'}{os.pathsep}agent/specs/builtin",
            # Collectors, renderers and services are imported inside functions (to keep the
            # CLI's start-up short); take every module of our own packages.
            "--collect-submodules", "agent", "--collect-submodules", "protos",
            # The collector is the server's, never the customer's.
            "--exclude-module", "collector", "--exclude-module", "pytest", "--exclude-module", "hypothesis",
            # The protos' generator (protoc and its includes: several MiB) is a developer's tool.
            "--exclude-module", "protos.generate", "--exclude-module", "grpc_tools",
            "--exclude-module", "sqlalchemy", "--exclude-module", "psycopg", "--exclude-module", "boto3",
            "--exclude-module", "botocore", "--exclude-module", "moto", "--exclude-module", "setuptools",
            # zstandard ships two backends; the C one is the one it loads (its cffi twin: 2.6 MiB).
            "--exclude-module", "zstandard._cffi", "--exclude-module", "zstandard.backend_cffi",
            # The CJK multibyte codecs (0.5 MiB): every text Casefile reads is decoded as UTF-8
            # (or UTF-16 / cp850 from Windows tools); an unknown codec is a clean LookupError.
            *(x for m in _CJK_CODECS for x in ("--exclude-module", m)),
            # Symbols and debug sections of the packed libraries (zstandard's C backend
            # alone carries 10 MiB of debug info; the code is unchanged).
            "--strip",
            str(ROOT / "agent" / "single_file.py"),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=work)
    out = ROOT / "dist" / name
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB; {stamp}")
    # The stamp names the build machine's glibc; what the packed libraries need must not exceed it.
    sys.path.insert(0, str(ROOT / "packaging"))
    from glibc_needed import glibc_needed

    needed, by = glibc_needed(out)
    print(f"highest GLIBC_ symbol version needed: {needed} (by {', '.join(by)})")
    if tuple(map(int, needed.split("."))) > tuple(map(int, libc_version.split(".") or ["0"])):
        print(f"error: the stamp says glibc >= {libc_version}, the file needs {needed}", file=sys.stderr)
        return 1
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
