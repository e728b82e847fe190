"""Progress for long work, on a terminal only: uploads, downloads and deep scans.

Quiet when the output is piped or ``--json`` was asked for, so scripts read the same
bytes as before. The default collection takes well under a second, so the scan's
progress appears only once a run has lasted ``SHOW_AFTER_S``: a short run never flashes
a bar.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.status import Status

    from agent.collect import RunningCollection

__all__ = ["SHOW_AFTER_S", "TransferProgress", "wait_with_progress"]

SHOW_AFTER_S = 2.0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # unreachable; keeps mypy sure of the return


class TransferProgress:
    """A bytes bar (done, rate, time left) fed by ``update(done, total)`` callbacks.

    The first update of an upload carries the offset the collector already holds: when
    it is not zero, one line says "resuming at X of Y" before the bar.
    """

    def __init__(self, console: Console, what: str, *, enabled: bool) -> None:
        self._console, self._what, self._enabled = console, what, enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> TransferProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            if 0 < done < total:  # (all of it at once: a small bundle sent in one go)
                self._console.print(f"resuming at {_size(done)} of {_size(total)}", highlight=False)
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._what, total=total, completed=done)
        assert self._task is not None
        self._progress.update(self._task, completed=done, total=total)


def wait_with_progress(running: RunningCollection, console: Console, *, enabled: bool, poll_s: float = 0.1) -> None:
    """Until the collectors are done (or past the run's budget), show how many are done of
    how many, and which are still running; returns without waiting when not enabled."""
    if not enabled:
        return
    deadline = time.monotonic() + running.total_budget_s - running.elapsed_s()
    status: Status | None = None
    try:
        while time.monotonic() < deadline:
            pending = running.pending()
            if not pending:
                return
            if status is None and running.elapsed_s() >= SHOW_AFTER_S:
                status = console.status("", spinner="dots")
                status.start()
            if status is not None:
                done = running.total - len(pending)
                status.update(f"collecting: {done} of {running.total} done; running {', '.join(pending)}")
            time.sleep(poll_s)
    finally:
        if status is not None:
            status.stop()
