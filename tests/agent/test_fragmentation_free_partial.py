"""The free-space map (GETFSMAP) within its own bound, on real ext4 and XFS loop images.

On a large filesystem the whole map takes seconds, so reading it stops at
``frag_free_budget_s``; the facts then say the map is partial and how much of the
filesystem it covered, and the free-space finding is judged only by what the part read
proves of *all* the free space (statfs), never by the share in that part.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.analysis import BundleView, run_rules
from agent.collect import fiemap
from agent.collect.builtin import fragmentation_linux as lin
from agent.collect.freespace import fields_of, free_space_fields
from protos import facts_pb2
from tests.agent.fragfiles import mount_image, write_into_holes


def _facts(mnt: str, fstype: str, fields: dict[str, object]) -> facts_pb2.Snapshot:
    s = facts_pb2.Snapshot(kind="one-shot")
    fs = s.fragmentation.filesystems.add(mountpoint=mnt, fstype=fstype, method="fiemap")
    fs.free_space.CopyFrom(facts_pb2.FreeSpaceFragmentation(**fields))
    return s


def _free_findings(snapshot: facts_pb2.Snapshot, warn_pct: float = 70.0) -> list[str]:
    overrides = {"fragmentation-free-space": {"warn_pct": warn_pct}}
    found = run_rules(BundleView.from_snapshot(snapshot, []), overrides=overrides).findings
    return [f.title for f in found if f.code == "fragmentation-free-space"]


@pytest.fixture(params=["ext4", "xfs"])
def holed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Free space in 64 KiB pieces between the pieces of one file (thousands of GETFSMAP records)."""
    fstype: str = request.param
    for mnt in mount_image(fstype, tmp_path, size_mib=512):
        write_into_holes(mnt, [], fill=mnt / "backup.vbk")
        yield fstype, mnt



@pytest.mark.root
def test_a_map_cut_short_says_partial_and_how_much_it_covered(holed: tuple[str, Path]) -> None:
    fstype, mnt = holed
    whole = fiemap.free_space(str(mnt))
    assert not whole.partial and whole.covered_pct == 100.0
    part = fiemap.free_space(str(mnt), batch=64, deadline=time.monotonic())  # one answer of 64 records, then stop
    assert part.partial and 0.0 < part.covered_pct < 100.0
    assert 0 < part.free_extents < whole.free_extents and part.small_bytes < whole.small_bytes
    st = os.statvfs(mnt)
    assert part.fs_free_bytes == whole.fs_free_bytes or abs(part.fs_free_bytes - st.f_bfree * st.f_frsize) < 1 << 20
    # The child keeps to the bound too (0 s: one answer of 512 records), and says so.
    facts = lin.free_space_in_child(str(mnt), fstype, timeout=30.0, budget_s=0.0)
    assert facts.available and facts.partial and facts.covered_pct < 100.0
    assert "frag_free_budget_s" in facts.reason
    full = lin.free_space_in_child(str(mnt), fstype, timeout=30.0, budget_s=30.0)
    assert not full.partial and full.covered_pct == 100.0 and full.free_extents == whole.free_extents


@pytest.mark.root
def test_a_partial_map_raises_no_false_finding_and_a_proving_one_says_partial(holed: tuple[str, Path]) -> None:
    fstype, mnt = holed
    # The whole map: the finding, as before.
    whole = free_space_fields(str(mnt), fstype)
    assert whole["pct_free_in_small_extents"] >= 70.0 and not whole.get("partial")
    assert [t for t in _free_findings(_facts(str(mnt), fstype, whole)) if not t.endswith("(free-space map partial)")]
    # One answer's worth: the part read is all small pieces, but it proves little of the whole: no finding.
    first = free_space_fields(str(mnt), fstype, budget_s=0.0)
    assert first["partial"] and first["pct_free_in_small_extents"] >= 70.0
    assert 100.0 * first["small_free_bytes"] / first["fs_free_bytes"] < 70.0
    assert _free_findings(_facts(str(mnt), fstype, first)) == []
    # Most of the map: the small pieces read already are over half of all the free space, which a
    # rule told to warn from 50 % takes as proved: the finding, marked partial.
    calls = 1
    while True:
        part = fiemap.free_space(str(mnt), batch=64, max_calls=calls)
        if not part.partial or 100.0 * part.small_bytes / part.fs_free_bytes >= 50.0:
            break
        calls += max(1, calls // 8)
    assert part.partial, "the map was read whole before it proved the share"
    (title,) = _free_findings(_facts(str(mnt), fstype, fields_of(part, 0.5)), warn_pct=50.0)
    assert title.endswith("(free-space map partial)") and "at least 5" in title


def test_partial_figures_alone_never_raise_the_finding() -> None:
    """95 % small in the part read, but that part holds 2 % of the free space: nothing is proved."""
    fields = {"available": True, "partial": True, "covered_pct": 5.0, "free_extents": 4000,
              "pct_free_in_small_extents": 95.0, "small_free_bytes": 2 << 30, "fs_free_bytes": 100 << 30}
    assert _free_findings(_facts("/srv", "ext4", fields)) == []
    fields["small_free_bytes"] = 80 << 30
    (title,) = _free_findings(_facts("/srv", "ext4", fields))
    assert "at least 80% of the free space" in title and title.endswith("(free-space map partial)")
