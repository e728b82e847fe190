"""The oldest glibc the single file runs on: the highest ``GLIBC_x.y`` symbol version that
the file itself (PyInstaller's bootloader) or any library packed in it needs.

``python packaging/glibc_needed.py [FILE]`` (default: the built single file) prints it,
and the libraries that need it, from ``objdump -T`` of each ELF file in the archive.
packaging/build_dist.py writes the figure into the build stamp ``--version`` prints.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["glibc_needed"]

_VERSION = re.compile(r"\bGLIBC_(\d+)\.(\d+)(?:\.(\d+))?\b")


def _needed(path: Path) -> tuple[int, ...]:
    out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, check=False).stdout
    found = [tuple(int(x) for x in m.groups() if x is not None) for m in _VERSION.finditer(out)]
    return max(found, default=())


def glibc_needed(single: Path) -> tuple[str, list[str]]:
    """("2.x", [names needing it]) for the single file ``single``."""
    from PyInstaller.archive.readers import CArchiveReader

    reader = CArchiveReader(str(single))
    versions: dict[str, tuple[int, ...]] = {single.name: _needed(single)}
    with tempfile.TemporaryDirectory(prefix="casefile-glibc-") as work:
        for name, entry in reader.toc.items():
            if entry[4] != "b":  # binaries: extension modules and shared libraries
                continue
            dest = Path(work) / "lib"
            dest.write_bytes(reader.extract(name))
            versions[name] = _needed(dest)
    top = max(versions.values())
    return ".".join(map(str, top)), sorted(n for n, v in versions.items() if v == top)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if len(sys.argv) > 1:
        single = Path(sys.argv[1])
    else:
        import platform

        from agent.version import __version__

        single = Path(__file__).resolve().parent.parent / "dist" / f"casefile-{__version__}-linux-{platform.machine()}"
    version, names = glibc_needed(single)
    print(f"{single.name} needs glibc >= {version} (highest GLIBC_ symbol version, needed by {', '.join(names)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
