"""Regenerate the checked-in Python code from the .proto files.

    python -m protos.generate            # rewrite protos/*_pb2*.py{,i} in place
    python -m protos.generate --out DIR  # write into DIR/protos/ (the drift test)

The generator versions are pinned in pyproject's dev extra so that the output
is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "protos").glob("*.proto"))


def generate(out: Path) -> None:
    from grpc_tools import protoc  # dev dependency only

    plugin = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise SystemExit("protoc-gen-mypy_grpc not found next to this Python: install '.[dev]'")
    (out / "protos").mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--mypy_grpc_out={out}",
        *(str(ROOT / p) for p in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write protos/ under")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
