"""Progress on a terminal only: a resumed transfer says where it resumes, a deep scan
says how many collectors are done, and nothing is printed when it is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from agent.cli_progress import SHOW_AFTER_S, TransferProgress, wait_with_progress
from agent.collect import CollectionSpec, start_collection
from protos import facts_pb2


def _terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=120), buf


def test_a_resumed_transfer_says_where_it_resumes() -> None:
    console, buf = _terminal()
    with TransferProgress(console, "uploading", enabled=True) as bar:
        bar.update(3 << 20, 8 << 20)
        bar.update(8 << 20, 8 << 20)
    text = buf.getvalue()
    assert "resuming at 3.0 MiB of 8.0 MiB" in text
    assert "uploading" in text


def test_a_transfer_from_zero_or_not_on_a_terminal_prints_no_resume_line() -> None:
    console, buf = _terminal()
    with TransferProgress(console, "uploading", enabled=True) as bar:
        bar.update(0, 100)
        bar.update(100, 100)
    assert "resuming" not in buf.getvalue()
    whole, wbuf = _terminal()  # a small bundle sent in one go reports only its end
    with TransferProgress(whole, "uploading", enabled=True) as bar:
        bar.update(100, 100)
    assert "resuming" not in wbuf.getvalue()
    quiet, qbuf = _terminal()
    with TransferProgress(quiet, "uploading", enabled=False) as bar:
        bar.update(50, 100)
    assert qbuf.getvalue() == ""


def test_a_long_scan_shows_collectors_done_of_total() -> None:
    # A real collection with one collector asked to take longer than the moment after
    # which progress shows (a CPU sampling window: a fragmentation walk may end early on a
    # small filesystem, so it cannot promise to be long).
    spec = CollectionSpec(
        only=("host", "memory", "processes"),
        options={"processes_sample_s": SHOW_AFTER_S + 1.0},
        budgets={"processes": SHOW_AFTER_S + 10.0},
    )
    running = start_collection(spec)
    console, buf = _terminal()
    try:
        assert running.total == 3
        wait_with_progress(running, console, enabled=True)
        assert running.pending() == ()
    finally:
        result = running.wait()
    assert {s.name for s in result.statuses if s.state == facts_pb2.CollectorStatus.OK} >= {"host", "memory"}
    assert "collecting: 2 of 3 done; running processes" in buf.getvalue()


def test_a_short_run_shows_nothing() -> None:
    running = start_collection(CollectionSpec(only=("host",)))
    console, buf = _terminal()
    try:
        wait_with_progress(running, console, enabled=True)
    finally:
        running.wait()
    assert buf.getvalue() == ""
