"""Store-and-forward: bundles the collector could not take yet, in ``<home>/spool/``.

Each spooled bundle is its file plus a ``<file>.json`` sidecar (bundle id, request id,
sha256, when it was spooled). The daemon delivers the spool, oldest first, each time
its channel is accepted; ``upload_bundle`` resumes from whatever the collector already
holds, and the collector is idempotent on bundle id, so a delivery cut short is
finished next time and never stored twice. A delivered bundle is removed.

The bound: at most ``max_bundles`` bundles and ``max_bytes`` bytes (policy
``spool_max_bundles``, ``spool_max_bytes``). Adding past either drops the OLDEST
bundles until the spool fits again — the newest facts are the ones an engineer is
waiting for — and every drop is written to the history (outcome ``dropped``). A bundle
larger than ``max_bytes`` on its own is dropped at once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "SpooledBundle"]


@dataclass(frozen=True)
class SpooledBundle:
    path: Path
    bundle_id: str
    request_id: str
    sha256: str
    size: int
    spooled_at: float

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".json")


class Spool:
    def __init__(self, root: Path, *, max_bytes: int, max_bundles: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_bundles = max_bundles

    def pending(self) -> list[SpooledBundle]:
        """Spooled bundles, oldest first; a file without a readable sidecar is skipped."""
        found: list[SpooledBundle] = []
        if not self.root.is_dir():
            return found
        for side in self.root.glob("*.json"):
            bundle = side.with_name(side.name[: -len(".json")])
            try:
                meta = json.loads(side.read_text("utf-8"))
                size = bundle.stat().st_size
            except (OSError, ValueError):
                continue
            found.append(
                SpooledBundle(
                    path=bundle,
                    bundle_id=str(meta.get("bundle_id", "")),
                    request_id=str(meta.get("request_id", "")),
                    sha256=str(meta.get("sha256", "")),
                    size=size,
                    spooled_at=float(meta.get("spooled_at", 0.0)),
                )
            )
        found.sort(key=lambda b: (b.spooled_at, b.path.name))
        return found

    def add(
        self, path: Path, *, bundle_id: str, request_id: str, sha256: str
    ) -> tuple[SpooledBundle, list[SpooledBundle]]:
        """Move ``path`` into the spool; returns it and the bundles dropped to stay bounded."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        dest = self.root / path.name
        shutil.move(str(path), dest)
        item = SpooledBundle(
            path=dest,
            bundle_id=bundle_id,
            request_id=request_id,
            sha256=sha256,
            size=dest.stat().st_size,
            spooled_at=time.time(),
        )
        tmp = item.sidecar.with_suffix(".tmp")
        meta = {"bundle_id": bundle_id, "request_id": request_id, "sha256": sha256, "spooled_at": item.spooled_at}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(meta, fh)
        os.replace(tmp, item.sidecar)
        return item, self._enforce()

    def _enforce(self) -> list[SpooledBundle]:
        items = self.pending()
        dropped: list[SpooledBundle] = []
        total = sum(b.size for b in items)
        while items and (len(items) > self.max_bundles or total > self.max_bytes):
            oldest = items.pop(0)
            self.remove(oldest)
            total -= oldest.size
            dropped.append(oldest)
        return dropped

    def remove(self, item: SpooledBundle) -> None:
        # Sidecar first: a bundle file without one is never delivered, only swept.
        item.sidecar.unlink(missing_ok=True)
        item.path.unlink(missing_ok=True)
