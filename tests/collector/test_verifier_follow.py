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
from collector.services.verifier import Abandoned, Following, Verifier
from collector.storage import BlobStore
from tests.collector.parking import until


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
    staged = [blobs.open_upload(uuid.uuid4().hex, 1 << 20, "0" * 64) for _ in range(4)]
    followed: list[Following | None] = []

    async def main() -> None:
        followed.extend(verifier.follow(s, None, 1 << 20) for s in staged)
        assert all(f is not None for f in followed[:3]) and followed[3] is None  # three at most
        assert verifier._lead_busy and verifier.following == 3
        await until("both nicer followers started", lambda: len(_nice_of("casefile-verify-follow")) == 2)
        assert _nice_of("casefile-verify-lead") == [base]
        assert _nice_of("casefile-verify-follow") == [min(19, base + 7)] * 2
        for f in followed[:3]:
            assert f is not None
            f[0].abandon()
            with pytest.raises(Abandoned):
                await f[1]
        await until("every slot freed", lambda: verifier.following == 0)
        assert not verifier._lead_busy
        again = verifier.follow(staged[3], None, 1 << 20)
        followed.append(again)
        assert again is not None and verifier._lead_busy  # the lead again
        again[0].abandon()
        with pytest.raises(Abandoned):
            await again[1]
        await until("every slot and the lead freed", lambda: verifier.following == 0 and not verifier._lead_busy)

    try:
        asyncio.run(main())
    finally:
        for f in followed:
            if f is not None:
                f[0].abandon()  # a failed assertion must not leave threads waiting for bytes
        verifier.close()
        for s in staged:
            s.close()


def test_a_follower_given_up_before_it_started_frees_its_slot(tmp_path: Path) -> None:
    """An upload's verifier cancelled before a thread took it (or as it starts), then its
    stream abandoned: the slot and the lead are free again every time."""
    verifier = Verifier(IngestLimits(stream_verify_min_bytes=0, stream_verify_workers=2))
    blobs = BlobStore(tmp_path / "blobs")

    async def main() -> None:
        for _ in range(10):
            staged = blobs.open_upload(uuid.uuid4().hex, 1 << 20, "0" * 64)
            f = verifier.follow(staged, None, 1 << 20)
            assert f is not None
            f[1].cancel()
            f[0].abandon()
            await until("every slot and the lead freed", lambda: verifier.following == 0 and not verifier._lead_busy)
            staged.close()

    try:
        asyncio.run(main())
    finally:
        verifier.close()


def test_no_follower_once_the_verifier_is_closed(tmp_path: Path) -> None:
    verifier = Verifier(IngestLimits(stream_verify_min_bytes=0, stream_verify_workers=2))
    blobs = BlobStore(tmp_path / "blobs")
    staged = blobs.open_upload(uuid.uuid4().hex, 1 << 20, "0" * 64)

    async def main() -> None:
        first = verifier.follow(staged, None, 1 << 20)
        assert first is not None
        first[0].abandon()
        with pytest.raises(Abandoned):
            await first[1]
        await until("every slot freed", lambda: verifier.following == 0)
        assert verifier._lead is not None
        verifier._lead.shutdown(wait=True)  # as close() leaves it while an upload still arrives
        assert verifier.follow(staged, None, 1 << 20) is None  # verified after receipt instead
        assert verifier.following == 0 and not verifier._lead_busy

    try:
        asyncio.run(main())
    finally:
        verifier.close()
        staged.close()

