"""The verifier that follows an upload while it arrives: at which priority its thread runs."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import uuid
from pathlib import Path

import pytest

from collector.services.upload_limits import IngestLimits
from collector.services.verifier import Abandoned, Verifier
from collector.storage import BlobStore


def _nice_of(name_prefix: str) -> list[int]:
    return [
        os.getpriority(os.PRIO_PROCESS, t.native_id)
        for t in threading.enumerate()
        if t.name.startswith(name_prefix) and t.native_id is not None
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value per thread is Linux's")
def test_one_follower_runs_at_the_collectors_priority_the_others_nicer(tmp_path: Path) -> None:
    """The lead follower, whose upload's receipt waits for it, runs at the collector's
    priority; followers of uploads arriving meanwhile run ``verify_nice`` lower; once the
    lead's upload is done, the next upload has the lead again."""
    limits = IngestLimits(stream_verify_min_bytes=0, stream_verify_workers=3, verify_nice=7)
    verifier = Verifier(limits)
    blobs = BlobStore(tmp_path / "blobs")
    base = os.getpriority(os.PRIO_PROCESS, 0)

    async def main() -> None:
        staged = [blobs.open_upload(uuid.uuid4().hex, 1 << 20, "0" * 64) for _ in range(4)]
        followed = [verifier.follow(s, None, 1 << 20) for s in staged]
        assert all(f is not None for f in followed[:3]) and followed[3] is None  # three at most
        for _ in range(100):
            if len(_nice_of("casefile-verify-follow")) == 2:
                break
            await asyncio.sleep(0.02)
        assert _nice_of("casefile-verify-lead") == [base]
        assert _nice_of("casefile-verify-follow") == [min(19, base + 7)] * 2
        for f in followed[:3]:
            assert f is not None
            f[0].abandon()
            with pytest.raises(Abandoned):
                await f[1]
        for _ in range(100):
            if verifier.following == 0:
                break
            await asyncio.sleep(0.01)
        assert verifier.following == 0
        again = verifier.follow(staged[3], None, 1 << 20)
        assert again is not None
        assert again[1] is not None
        again[0].abandon()
        with pytest.raises(Abandoned):
            await again[1]
        assert len(_nice_of("casefile-verify-lead")) == 1  # the lead's one thread took it
        for s in staged:
            s.close()

    try:
        asyncio.run(main())
    finally:
        verifier.close()
