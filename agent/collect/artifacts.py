"""Artifacts (raw files a collector asks to put in the bundle) and the per-run temp area.

An artifact is either bytes in memory (small: command output, a config file) or a file
on disk (logs: a collector streams lines into ``ctx.temp_path(...)`` and hands the file
over, so memory stays bounded however large the logs are). Consumers — the privacy
phase and the bundle writer — read both kinds the same way, through ``open()``.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, TypeAlias

# ``core``: a process's memory (agent.collect.builtin.corefiles), binary, copied byte for
# byte under the ``standard`` profile and never kept under ``private`` or ``facts-only``.
ArtifactKind: TypeAlias = Literal["log", "command", "file", "config", "core"]
ARTIFACT_KINDS: frozenset[str] = frozenset({"log", "command", "file", "config", "core"})


@dataclass(frozen=True)
class Artifact:
    """One bundle member a collector produced: ``path`` inside the bundle, and its bytes.

    Exactly one of ``content`` (bytes-backed) and ``source`` (file-backed) is set. A
    file-backed artifact's file lives until the run's ``CollectionResult.close()``.
    """

    collector: str
    path: str
    kind: ArtifactKind
    size: int
    content: bytes | None = field(default=None, repr=False)
    source: Path | None = None

    def open(self) -> BinaryIO:
        """A fresh binary reader over the artifact's bytes; the caller closes it."""
        if self.content is not None:
            return io.BytesIO(self.content)
        if self.source is None:
            raise ValueError(f"artifact {self.path!r} has neither content nor source")
        return open(self.source, "rb")

    @property
    def data(self) -> bytes:
        """All bytes at once — for small artifacts and tests; stream big ones with open()."""
        if self.content is not None:
            return self.content
        with self.open() as fh:
            return fh.read()


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class TempArea:
    """A directory created on first use and removed by ``cleanup()`` (or when collected).

    One per run: collectors get subdirectories of it for files they turn into
    artifacts. Abandoned collector threads may still write after cleanup; their writes
    fail in their own thread, which nobody reads any more.
    """

    def __init__(self, prefix: str = "casefile-collect-") -> None:
        self._prefix = prefix
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._finalizer: Callable[[], object] | None = None
        self._closed = False

    @property
    def path(self) -> Path:
        with self._lock:
            if self._closed:
                raise RuntimeError("the collection's temp area has been cleaned up")
            if self._path is None:
                self._path = Path(tempfile.mkdtemp(prefix=self._prefix))
                # A result nobody closed still removes its files when garbage-collected.
                self._finalizer = weakref.finalize(self, _remove_tree, str(self._path))
            return self._path

    def subdir(self, name: str) -> Path:
        sub = self.path / name
        sub.mkdir(exist_ok=True)
        return sub

    def cleanup(self) -> None:
        with self._lock:
            self._closed = True
            if self._finalizer is not None:
                self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed
