"""The runner: every selected collector at once, each in its own thread, under its budget.

Why daemon threads and not ``ThreadPoolExecutor``: concurrent.futures joins its workers
at interpreter exit, so one collector stuck in the kernel (a dead NFS mount, a DNS
lookup) would keep the CLI from ever exiting. A daemon thread is simply abandoned, and
its late output is dropped because the runner never reads it once the budget is spent.
For the same reason a collector must build its own message and never touch a shared one.

Resource guard: the run lowers its CPU and I/O priority before starting the threads
(``guard.py``; spec option ``lower_priority``, default true), and the whole run has a
wall-clock budget (``CollectionSpec.total_budget_s``): a collector's deadline is the
earlier of its own budget and the run's, so after the total budget every collector still
running is TIMEOUT. Duration and bytes are recorded per collector.

File-backed artifacts live in a per-run temp directory that ``CollectionResult.close()``
removes: use the result as a context manager around writing the bundle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType

from google.protobuf.message import Message

from agent.collect.artifacts import Artifact, TempArea
from agent.collect.framework import (
    CollectContext,
    CollectionSpec,
    Collector,
    Status,
    current_platform,
    describe_exception,
)
from agent.collect.guard import lowered_priority
from agent.collect.logparse import truncation_entries
from agent.collect.registry import LOWER_PRIORITY, RUNNER_OPTIONS, Registry, build_registry, registered_collectors
from agent.errors import CollectionError
from protos import facts_pb2

__all__ = ["CollectionResult", "RunningCollection", "run_collection", "start_collection", "statuses_to_dicts"]


@dataclass(frozen=True)
class CollectionResult:
    """One run: the merged snapshot (statuses included) plus what the manifest needs.

    Holds the run's temp directory (file-backed artifacts) until ``close()``.
    """

    snapshot: facts_pb2.Snapshot
    statuses: tuple[facts_pb2.CollectorStatus, ...]
    artifacts: tuple[Artifact, ...]
    warnings: tuple[tuple[str, str], ...]  # (collector, message)
    sizes: Mapping[str, int]  # collector -> bytes of its facts message plus artifacts
    duration_s: float
    spec: CollectionSpec
    selected: tuple[str, ...]
    guard: tuple[str, ...] = ()  # what the resource guard did
    # Options in the spec that no collector of this run looked at: a misspelt --set key, or
    # one for a collector that did not run.
    unread_options: tuple[str, ...] = ()
    temp: TempArea = field(default_factory=TempArea, repr=False, compare=False)

    def spec_dict(self) -> dict[str, object]:
        """JSON-able record of the spec (and which collectors it selected) for the manifest."""
        return {**self.spec.to_dict(), "selected": list(self.selected)}

    def status_dicts(self) -> list[dict[str, object]]:
        """This run's manifest entries, bytes and warnings included."""
        return statuses_to_dicts(self.statuses, sizes=self.sizes, warnings=self.warnings)

    def truncated(self) -> list[dict[str, object]]:
        """The manifest's ``truncated`` entries: log sources a cap or the budget cut.

        The logs collector's and those plugins report in their facts; a source cut to
        nothing is listed too, with ``member`` "" (``logparse.truncation_entries``).
        """
        return truncation_entries(self.snapshot)

    def close(self) -> None:
        """Remove the run's temp files; file-backed artifacts are unreadable afterwards."""
        self.temp.cleanup()

    def __enter__(self) -> CollectionResult:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def statuses_to_dicts(
    statuses: Sequence[facts_pb2.CollectorStatus],
    *,
    sizes: Mapping[str, int] | None = None,
    warnings: Iterable[tuple[str, str]] = (),
) -> list[dict[str, object]]:
    """The manifest's per-collector entries: name, status (lowercase), duration, error, bytes."""
    by_name: dict[str, list[str]] = {}
    for name, message in warnings:
        by_name.setdefault(name, []).append(message)
    return [
        {
            "name": s.name,
            "status": Status.State.Name(s.state).lower(),
            "duration_ms": round(s.duration_ms, 3),
            "error": s.error,
            "bytes": (sizes or {}).get(s.name, 0),
            "warnings": by_name.get(s.name, []),
        }
        for s in statuses
    ]


class _Run:
    """One collector's thread and its outcome; the lock decides finish-versus-abandon."""

    def __init__(self, cls: type[Collector], ctx: CollectContext, budget: float) -> None:
        self.cls, self.ctx, self.budget = cls, ctx, budget
        self.lock = threading.Lock()
        self.finished = self.abandoned = False
        self.message: Message | None = None
        self.error = ""
        self.duration_s = 0.0
        self.thread = threading.Thread(target=self._work, name=f"casefile-collect-{cls.name}", daemon=True)

    def _work(self) -> None:
        started = time.monotonic()
        message: Message | None = None
        error = ""
        try:
            message = self.cls().collect(self.ctx)
            error = _check_output(self.cls, message)
        except BaseException as exc:  # recorded as ERROR; a thread has nowhere to raise to
            error = describe_exception(exc)
        with self.lock:
            if not self.abandoned:
                self.message = None if error else message
                self.error, self.duration_s = error, time.monotonic() - started
                self.finished = True


def _check_output(cls: type[Collector], message: object) -> str:
    if message is None:
        return ""
    if cls.facts_type is None:
        return f"returned a {type(message).__name__} but declares no facts_field"
    if not isinstance(message, cls.facts_type):
        return f"returned a {type(message).__name__}, expected {cls.facts_type.__name__}"
    return ""


def _check_names(spec: CollectionSpec, known: Sequence[str]) -> None:
    for what, names in (("only", spec.only), ("exclude", spec.exclude), ("budgets", spec.budgets)):
        unknown = [n for n in names if n not in known]
        if unknown:
            listed = ", ".join(map(repr, unknown))
            raise CollectionError(
                f"collection spec: unknown collector(s) in {what}: {listed}; known: {', '.join(known)}"
            )


def _skip_reason(name: str, default: bool, spec: CollectionSpec) -> str:
    if name in spec.exclude:
        return "excluded by the collection spec"
    if spec.only:
        return "" if name in spec.only else "not selected by the collection spec"
    return "" if default else "not in the default scope"


def run_collection(
    spec: CollectionSpec | None = None, *, collectors: Iterable[type[Collector]] | None = None
) -> CollectionResult:
    """Run the selected collectors concurrently, each under its budget; never raises for one.

    ``collectors`` replaces the registry (built-ins and plugins) for this run. Raises
    CollectionError only for a bad spec or badly declared collectors.
    """
    return start_collection(spec, collectors=collectors).wait()


class RunningCollection:
    """A collection whose collectors are running; ``wait`` gathers it into a result.

    Between ``start_collection`` and ``wait`` the calling thread is free: most of a run
    is collectors sleeping through their sampling windows, and a caller can spend that
    time on what it needs afterwards (the one-shot path builds its redactor and imports
    what sealing needs). A caller that gives up calls ``abandon`` instead of ``wait``.
    """

    def __init__(
        self,
        registry: Registry,
        spec: CollectionSpec,
        statuses: dict[str, Status],
        runs: list[_Run],
        started: float,
        temp: TempArea,
        others_done: threading.Event,
        cancelled: threading.Event,
        guard: tuple[str, ...],
    ) -> None:
        self._registry, self._spec, self._statuses, self._runs = registry, spec, statuses, runs
        self._started, self._temp, self._others_done, self._guard = started, temp, others_done, guard
        self._cancelled = cancelled

    @property
    def total(self) -> int:
        """How many collectors run, observers aside (they run until the others are done)."""
        return sum(1 for run in self._runs if not run.cls.observes)

    @property
    def total_budget_s(self) -> float:
        return self._spec.total_budget_s

    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def pending(self) -> tuple[str, ...]:
        """The collectors still running, observers aside; for a progress display."""
        return tuple(run.cls.name for run in self._runs if not run.cls.observes and not run.finished)

    def wait(self) -> CollectionResult:
        """Wait for every collector (or its budget), then merge; call once."""
        spec, statuses, runs, started = self._spec, self._statuses, self._runs, self._started
        gathered = _Gathered()
        try:
            # Observers (the time series) watch the others: they are told when the rest is done.
            for run in sorted(runs, key=lambda r: r.cls.observes):
                if run.cls.observes:
                    self._others_done.set()
                run.thread.join(run.ctx.remaining())
                statuses[run.cls.name] = gathered.settle(run, started, spec.total_budget_s)
        finally:
            self._others_done.set()

        ordered = tuple(statuses[n] for n in self._registry.names())
        gathered.snapshot.collectors.extend(ordered)
        return CollectionResult(
            snapshot=gathered.snapshot,
            statuses=ordered,
            artifacts=tuple(gathered.artifacts),
            warnings=tuple(gathered.warnings),
            sizes=MappingProxyType(gathered.sizes),
            duration_s=time.monotonic() - started,
            spec=spec,
            selected=tuple(run.cls.name for run in runs),
            guard=self._guard,
            temp=self._temp,
            unread_options=_unread(spec, runs),
        )

    def abandon(self) -> None:
        """Give the run up: whatever the collectors return is never read; temp files go;
        commands started with ``cancel=ctx.cancelled`` are killed."""
        for run in self._runs:
            with run.lock:
                run.abandoned = True
        self._cancelled.set()
        self._others_done.set()
        self._temp.cleanup()


def start_collection(
    spec: CollectionSpec | None = None,
    *,
    collectors: Iterable[type[Collector]] | None = None,
    extra: Iterable[type[Collector]] = (),
) -> RunningCollection:
    """Start the selected collectors (``run_collection`` without the waiting).

    ``extra`` adds collectors to the registry for this run (a collection spec's), the
    registry's broken plugins still reported. Raises CollectionError, before anything
    starts, for a bad spec or badly declared collectors.
    """
    spec = spec or CollectionSpec()
    if collectors is None:
        base = registered_collectors()
        registry = build_registry((*base.collectors, *extra), base.broken) if extra else base
    else:
        registry = build_registry((*collectors, *extra))
    _check_names(spec, registry.names())
    lower = LOWER_PRIORITY.check(spec.options.get(LOWER_PRIORITY.name, LOWER_PRIORITY.default))
    temp = TempArea()
    others_done = threading.Event()
    cancelled = threading.Event()  # abandon() sets it: commands run with cancel=ctx.cancelled stop
    with lowered_priority(lower) as guard_notes:
        started = time.monotonic()
        statuses, runs = _plan(registry, spec, started, temp, others_done, cancelled)
        for run in runs:
            run.thread.start()
    return RunningCollection(registry, spec, statuses, runs, started, temp, others_done, cancelled, tuple(guard_notes))


def _unread(spec: CollectionSpec, runs: list[_Run]) -> tuple[str, ...]:
    read = {opt.name for opt in RUNNER_OPTIONS}.union(*(run.ctx.option_reads for run in runs))
    return tuple(sorted(key for key in spec.options if key not in read))


def _plan(
    registry: Registry,
    spec: CollectionSpec,
    started: float,
    temp: TempArea,
    others_done: threading.Event,
    cancelled: threading.Event,
) -> tuple[dict[str, Status], list[_Run]]:
    """Statuses for what will not run (skipped, unsupported, broken), runs for the rest."""
    platform = current_platform()
    statuses: dict[str, Status] = {}
    runs: list[_Run] = []
    for cls in registry.collectors:
        reason = _skip_reason(cls.name, cls.default, spec)
        if reason:
            statuses[cls.name] = Status(name=cls.name, state=Status.SKIPPED, error=reason)
        elif platform not in cls.platforms:
            statuses[cls.name] = Status(name=cls.name, state=Status.UNSUPPORTED, error=f"unsupported on {platform}")
        else:
            budget = spec.budgets.get(cls.name, cls.budget_s)
            deadline = started + min(budget, spec.total_budget_s)
            ctx = CollectContext(
                cls.name, spec, deadline, temp_area=temp, others_done=others_done, cancelled=cancelled,
                declared=cls.options,
            )  # fmt: skip
            runs.append(_Run(cls, ctx, budget))
    for plugin in registry.broken:
        reason = _skip_reason(plugin.name, True, spec)
        state = Status.SKIPPED if reason else Status.ERROR
        statuses[plugin.name] = Status(name=plugin.name, state=state, error=reason or plugin.error)
    return statuses, runs


@dataclass
class _Gathered:
    """What finished collectors contributed, merged in registry order."""

    snapshot: facts_pb2.Snapshot = field(default_factory=facts_pb2.Snapshot)
    artifacts: list[Artifact] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    taken: dict[str, str] = field(default_factory=dict)  # artifact path -> collector

    def settle(self, run: _Run, started: float, total_budget_s: float) -> Status:
        name = run.cls.name
        with run.lock:
            if not run.finished:
                run.abandoned = True  # whatever it returns later is never read
                if run.budget > total_budget_s:
                    error = f"did not finish within the run's total budget of {total_budget_s:g} s"
                else:
                    error = f"did not finish within its budget of {run.budget:g} s"
                return Status(
                    name=name,
                    state=Status.TIMEOUT,
                    duration_ms=(time.monotonic() - started) * 1000,
                    error=error,
                )
        self.warnings.extend((name, w) for w in run.ctx.warnings)
        duration_ms = run.duration_s * 1000
        if run.error:
            return Status(name=name, state=Status.ERROR, duration_ms=duration_ms, error=run.error)
        size = 0
        if run.message is not None and run.cls.facts_field is not None:
            getattr(self.snapshot, run.cls.facts_field).CopyFrom(run.message)
            size = run.message.ByteSize()
        if run.ctx.plugin_facts is not None:
            self.snapshot.plugin_facts[name] = run.ctx.plugin_facts
            size += len(run.ctx.plugin_facts)
        for artifact in run.ctx.artifacts:
            path = artifact.path
            if path in self.taken:  # the first collector in registry order keeps the path
                self.warnings.append((name, f"artifact {path!r} dropped: {self.taken[path]!r} has it"))
                continue
            self.taken[path] = name
            self.artifacts.append(artifact)
            size += artifact.size
        self.sizes[name] = size
        return Status(name=name, state=Status.OK, duration_ms=duration_ms)
