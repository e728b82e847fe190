"""Writing files that come out fragmented, for the fragmentation tests."""

from __future__ import annotations

import os
from pathlib import Path


def write_interleaved(paths: list[Path], rounds: list[int], chunk: bytes | None = None) -> None:
    """Appends interleaved with fsync: file i gets ``rounds[i]`` chunks, in pieces (fragments)."""
    chunk = chunk if chunk is not None else os.urandom(64 << 10)
    files = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below
    try:
        for r in range(max(rounds)):
            for f, n in zip(files, rounds, strict=True):
                if r < n:
                    f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
    finally:
        for f in files:
            f.close()
