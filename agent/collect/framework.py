"""The collection framework: what a collector declares, the registry, and the runner.

A collector is a small class that *declares* its name, platforms, time budget and the
``Snapshot`` field it fills, and implements ``collect(ctx)`` returning a NEW message of
that type. The runner (``run_collection``) starts every selected collector at once, each
in its own thread, waits up to each one's budget, and records a ``CollectorStatus`` per
collector. One broken, slow or unsupported collector never breaks a collection.

Why daemon threads and not ``ThreadPoolExecutor``: concurrent.futures joins its workers
at interpreter exit, so one collector stuck in the kernel (a dead NFS mount, a DNS
lookup) would keep the CLI from ever exiting. A daemon thread is simply abandoned, and
its late output is dropped because the runner never reads it once the budget is spent.
For the same reason a collector must build its own message and never touch a shared one.

psutil's ``cpu_percent``, ``cpu_times_percent`` and ``process_iter`` keep module-global
state that is not thread-safe (psutil #1991, #1667). Only the ``cpu`` collector may call
``cpu_percent``/``cpu_times_percent``; a future process collector must be the only
caller of ``process_iter``. Everything else in psutil used here is stateless.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Generic, NamedTuple, TypeAlias, TypeVar

from google.protobuf.message import Message

from agent.errors import CollectionError
from protos import facts_pb2

KNOWN_PLATFORMS: frozenset[str] = frozenset({"linux", "darwin", "windows"})
ALL_PLATFORMS: frozenset[str] = KNOWN_PLATFORMS
MAX_BUDGET_S = 60.0
# A spec may give a collector more time than it declares (deep collections), within reason.
MAX_BUDGET_OVERRIDE_S = 3600.0
# Snapshot message fields that the bundle writer owns, not collectors.
RESERVED_FIELDS = frozenset({"collected_at", "collectors"})
# Bundle members the bundle writer owns (DESIGN §3); no artifact may take these paths.
RESERVED_MEMBERS = frozenset(
    {"facts.pb", "facts.json", "findings.json", "report.html", "MANIFEST.json", "MANIFEST.sig"}
)
_MAX_ERROR_CHARS = 2000
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")

OptionValue: TypeAlias = str | int | float | bool
Status = facts_pb2.CollectorStatus
T = TypeVar("T")


def current_platform() -> str:
    """The platform name collectors declare: "linux", "darwin", "windows" (or sys.platform)."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform in ("win32", "cygwin"):
        return "windows"
    return sys.platform


class Collector(ABC):
    """One unit of collection. Subclasses declare the class attributes and implement collect.

    ``collect`` runs in its own thread, possibly past its budget (then its output is
    dropped), so it must return a fresh message and keep no state shared with others.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    platforms: ClassVar[frozenset[str]] = ALL_PLATFORMS
    budget_s: ClassVar[float] = 5.0
    default: ClassVar[bool] = True
    facts_field: ClassVar[str | None] = None
    facts_type: ClassVar[type[Message] | None] = None

    @abstractmethod
    def collect(self, ctx: CollectContext) -> Message | None:
        """Gather facts and return a new ``facts_type`` message (or None for none)."""


def declaration_problems(obj: object) -> list[str]:
    """What is wrong with a collector class's declarations; empty when it is sound."""
    if not (isinstance(obj, type) and issubclass(obj, Collector)):
        return [f"{obj!r} is not a Collector subclass"]
    problems: list[str] = []
    name = getattr(obj, "name", None)
    if not (isinstance(name, str) and _NAME_RE.match(name)):
        problems.append(f"name {name!r} is not a lowercase identifier")
    if getattr(obj, "__abstractmethods__", None):
        problems.append("collect() is not implemented")
    description = getattr(obj, "description", None)
    if not (isinstance(description, str) and description.strip()):
        problems.append("description is empty")
    budget = obj.budget_s
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        problems.append(f"budget_s {budget!r} is not a number")
    elif not (0 < budget <= MAX_BUDGET_S):
        problems.append(f"budget_s {budget!r} is not in (0, {MAX_BUDGET_S:g}]")
    platforms = obj.platforms
    if not (isinstance(platforms, frozenset) and platforms and platforms <= KNOWN_PLATFORMS):
        problems.append(
            f"platforms {platforms!r} is not a non-empty subset of {sorted(KNOWN_PLATFORMS)}"
        )
    if not isinstance(obj.default, bool):
        problems.append(f"default {obj.default!r} is not a bool")
    problems.extend(_facts_problems(obj.facts_field, obj.facts_type))
    return problems


def _facts_problems(facts_field: object, facts_type: object) -> list[str]:
    if facts_field is None and facts_type is None:
        return []
    fields = facts_pb2.Snapshot.DESCRIPTOR.fields_by_name
    if not isinstance(facts_field, str) or facts_field not in fields:
        return [f"facts_field {facts_field!r} is not a Snapshot field"]
    fd = fields[facts_field]
    if fd.message_type is None or fd.is_repeated or facts_field in RESERVED_FIELDS:
        return [f"facts_field {facts_field!r} is not a singular message field collectors may fill"]
    if not (isinstance(facts_type, type) and issubclass(facts_type, Message)):
        return [f"facts_type {facts_type!r} is not a protobuf message class"]
    if facts_type.DESCRIPTOR is not fd.message_type:
        return [
            f"facts_type {facts_type.DESCRIPTOR.full_name} does not match Snapshot.{facts_field} "
            f"({fd.message_type.full_name})"
        ]
    return []


def _check_artifact_path(path: object) -> None:
    """A bundle member path must be relative, stay inside the bundle, and not be reserved."""
    if not isinstance(path, str) or not path or "\\" in path or "\0" in path:
        raise ValueError("must be a non-empty string without backslashes or NUL")
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError("must be relative, without empty, '.' or '..' components")
    if path in RESERVED_MEMBERS:
        raise ValueError("is reserved for the bundle itself")


class CollectContext:
    """What a running collector gets: options, its deadline, warnings and artifacts."""

    def __init__(self, collector: str, spec: CollectionSpec, deadline: float) -> None:
        self.collector = collector
        self.spec = spec
        self.deadline = deadline  # time.monotonic() value
        self._warnings: list[str] = []
        self._artifacts: dict[str, bytes] = {}

    @property
    def options(self) -> Mapping[str, OptionValue]:
        return self.spec.options

    def remaining(self) -> float:
        """Seconds left in this collector's budget (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def warn(self, message: str) -> None:
        """Record a non-fatal problem; the collector's status stays OK."""
        self._warnings.append(message)

    def add_artifact(self, path: str, data: bytes) -> None:
        """Ask for raw ``data`` in the bundle as member ``path`` (relative, e.g. "logs/x.txt")."""
        try:
            _check_artifact_path(path)
        except ValueError as exc:
            raise CollectionError(
                f"collector {self.collector!r}: artifact path {path!r} {exc}"
            ) from None
        if path in self._artifacts:
            raise CollectionError(f"collector {self.collector!r}: artifact {path!r} added twice")
        self._artifacts[path] = bytes(data)

    def float_option(
        self, key: str, default: float, *, minimum: float = 0.0, maximum: float = MAX_BUDGET_S
    ) -> float:
        """Option ``key`` as a float in [minimum, maximum]; a bad value is a clear error."""
        value = self.spec.options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise CollectionError(f"option {key!r} must be a number, got {value!r}")
        if not minimum <= value <= maximum:
            raise CollectionError(
                f"option {key!r} must be within [{minimum:g}, {maximum:g}], got {value!r}"
            )
        return float(value)

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(self._warnings)

    @property
    def artifacts(self) -> tuple[tuple[str, bytes], ...]:
        return tuple(self._artifacts.items())


class Pending(Generic[T]):
    """A call running in a daemon thread, abandoned if it does not finish in time.

    The one helper for calls that can block in the kernel (disk_usage on a dead mount,
    getfqdn on a dead resolver): collectors must not copy their own thread loops.
    """

    def __init__(self, fn: Callable[[], T], *, name: str) -> None:
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._fn = fn
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to whoever asks for the result
            self._error = exc
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float) -> T:
        """The call's value, its exception, or TimeoutError after ``timeout`` seconds."""
        if not self._done.wait(max(0.0, timeout)):
            raise TimeoutError(f"no answer within {timeout:.2f} s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set whenever _error is None


def _names(what: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise CollectionError(f"collection spec: {what} must be a sequence of collector names")
    names = tuple(value)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise CollectionError(f"collection spec: {what} holds non-string names {bad!r}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class CollectionSpec:
    """What to collect: which collectors, their budgets, and options for them.

    ``only`` empty means the default scope. Names are checked against the registry when
    the collection runs (an unknown one is a CollectionError listing the known ones).
    """

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    budgets: Mapping[str, float] = field(default_factory=dict)
    options: Mapping[str, OptionValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "only", _names("only", self.only))
        object.__setattr__(self, "exclude", _names("exclude", self.exclude))
        for what in ("budgets", "options"):
            if not isinstance(getattr(self, what), Mapping):
                raise CollectionError(f"collection spec: {what} must be a mapping")
        budgets: dict[str, float] = {}
        for name, value in dict(self.budgets).items():
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not (isinstance(name, str) and ok and 0 < value <= MAX_BUDGET_OVERRIDE_S):
                raise CollectionError(
                    f"collection spec: budget for {name!r} must be a number of seconds in "
                    f"(0, {MAX_BUDGET_OVERRIDE_S:g}], got {value!r}"
                )
            budgets[name] = float(value)
        options = dict(self.options)
        for key, opt in options.items():
            if not isinstance(key, str) or not isinstance(opt, str | int | float | bool):
                raise CollectionError(
                    f"collection spec: option {key!r} has unsupported value {opt!r}"
                )
            if isinstance(opt, float) and not math.isfinite(opt):
                raise CollectionError(f"collection spec: option {key!r} is not finite: {opt!r}")
        object.__setattr__(self, "budgets", MappingProxyType(budgets))
        object.__setattr__(self, "options", MappingProxyType(options))

    def to_dict(self) -> dict[str, object]:
        return {
            "only": list(self.only),
            "exclude": list(self.exclude),
            "budgets": dict(self.budgets),
            "options": dict(self.options),
        }


class Artifact(NamedTuple):
    collector: str
    path: str
    data: bytes


@dataclass(frozen=True)
class CollectionResult:
    """One run: the merged snapshot (statuses included) plus what the manifest needs."""

    snapshot: facts_pb2.Snapshot
    statuses: tuple[facts_pb2.CollectorStatus, ...]
    artifacts: tuple[Artifact, ...]
    warnings: tuple[tuple[str, str], ...]  # (collector, message)
    sizes: Mapping[str, int]  # collector -> bytes of its facts message plus artifacts
    duration_s: float
    spec: CollectionSpec
    selected: tuple[str, ...]

    def spec_dict(self) -> dict[str, object]:
        """JSON-able record of the spec (and which collectors it selected) for the manifest."""
        return {**self.spec.to_dict(), "selected": list(self.selected)}

    def status_dicts(self) -> list[dict[str, object]]:
        """This run's manifest entries, bytes and warnings included."""
        return statuses_to_dicts(self.statuses, sizes=self.sizes, warnings=self.warnings)


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


def truncate_error(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def describe_exception(exc: BaseException) -> str:
    """``ExcType: message`` as recorded in a status (just ``ExcType`` when there is none)."""
    text = str(exc)
    return truncate_error(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


# --- registry -------------------------------------------------------------------------

ENTRY_POINT_GROUP = "casefile.collectors"


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that did not load as a sound collector; it reports as ERROR."""

    name: str  # the entry point's name
    error: str


@dataclass(frozen=True)
class Registry:
    collectors: tuple[type[Collector], ...]
    broken: tuple[BrokenPlugin, ...] = ()

    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.collectors) + tuple(b.name for b in self.broken)


def build_registry(
    collectors: Iterable[type[Collector]], broken: Iterable[BrokenPlugin] = ()
) -> Registry:
    """Check declarations and uniqueness; any problem is a CollectionError naming it."""
    classes, broken = tuple(collectors), tuple(broken)
    for cls in classes:
        problems = declaration_problems(cls)
        if problems:
            raise CollectionError(f"collector {cls!r} is declared wrongly: {'; '.join(problems)}")
    seen: dict[str, str] = {}
    fields: dict[str, str] = {}
    for name, origin, facts_field in [
        *((c.name, f"{c.__module__}.{c.__qualname__}", c.facts_field) for c in classes),
        *((b.name, f"entry point {b.name!r}", None) for b in broken),
    ]:
        if name in seen:
            raise CollectionError(f"two collectors are named {name!r}: {seen[name]} and {origin}")
        seen[name] = origin
        if facts_field is not None:
            if facts_field in fields:
                other = fields[facts_field]
                raise CollectionError(f"{other!r} and {name!r} both fill Snapshot.{facts_field}")
            fields[facts_field] = name
    return Registry(classes, broken)


_registry_lock = threading.Lock()
_registry: Registry | None = None


def registered_collectors(*, refresh: bool = False) -> Registry:
    """Built-in collectors plus plugins from the ``casefile.collectors`` entry points.

    Loaded on first use and cached (scanning installed distributions costs milliseconds
    a live snapshot should not pay each time); ``refresh=True`` scans again.
    """
    global _registry
    with _registry_lock:
        if _registry is None or refresh:
            from agent.collect.builtin import BUILTIN_COLLECTORS

            plugins, broken = _load_plugins()
            _registry = build_registry((*BUILTIN_COLLECTORS, *plugins), broken)
        return _registry


def _load_plugins() -> tuple[list[type[Collector]], list[BrokenPlugin]]:
    from importlib.metadata import entry_points

    plugins: list[type[Collector]] = []
    broken: list[BrokenPlugin] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        try:
            obj = ep.load()
        except (Exception, SystemExit) as exc:  # a broken plugin is an entry, never a crash
            broken.append(
                BrokenPlugin(
                    ep.name, f"plugin {ep.value!r} failed to load: {describe_exception(exc)}"
                )
            )
            continue
        problems = declaration_problems(obj)
        if problems:
            broken.append(
                BrokenPlugin(
                    ep.name,
                    truncate_error(
                        f"plugin {ep.value!r} is declared wrongly: {'; '.join(problems)}"
                    ),
                )
            )
        else:
            plugins.append(obj)
    return plugins, broken


# --- runner ---------------------------------------------------------------------------


class _Run:
    """One collector's thread and its outcome; the lock decides finish-versus-abandon."""

    def __init__(self, cls: type[Collector], ctx: CollectContext, budget: float) -> None:
        self.cls, self.ctx, self.budget = cls, ctx, budget
        self.lock = threading.Lock()
        self.finished = self.abandoned = False
        self.message: Message | None = None
        self.error = ""
        self.duration_s = 0.0
        self.thread = threading.Thread(
            target=self._work, name=f"casefile-collect-{cls.name}", daemon=True
        )

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
                f"collection spec: unknown collector(s) in {what}: {listed}; "
                f"known: {', '.join(known)}"
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
    spec = spec or CollectionSpec()
    registry = registered_collectors() if collectors is None else build_registry(collectors)
    _check_names(spec, registry.names())
    started = time.monotonic()
    statuses, runs = _plan(registry, spec, started)
    for run in runs:
        run.thread.start()
    gathered = _Gathered()
    for run in runs:
        run.thread.join(run.ctx.remaining())
        statuses[run.cls.name] = gathered.settle(run, started)

    ordered = tuple(statuses[n] for n in registry.names())
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
    )


def _plan(
    registry: Registry, spec: CollectionSpec, started: float
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
            statuses[cls.name] = Status(
                name=cls.name, state=Status.UNSUPPORTED, error=f"unsupported on {platform}"
            )
        else:
            budget = spec.budgets.get(cls.name, cls.budget_s)
            runs.append(_Run(cls, CollectContext(cls.name, spec, started + budget), budget))
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

    def settle(self, run: _Run, started: float) -> Status:
        name = run.cls.name
        with run.lock:
            if not run.finished:
                run.abandoned = True  # whatever it returns later is never read
                return Status(
                    name=name,
                    state=Status.TIMEOUT,
                    duration_ms=(time.monotonic() - started) * 1000,
                    error=f"did not finish within its budget of {run.budget:g} s",
                )
        self.warnings.extend((name, w) for w in run.ctx.warnings)
        duration_ms = run.duration_s * 1000
        if run.error:
            return Status(name=name, state=Status.ERROR, duration_ms=duration_ms, error=run.error)
        size = 0
        if run.message is not None and run.cls.facts_field is not None:
            getattr(self.snapshot, run.cls.facts_field).CopyFrom(run.message)
            size = run.message.ByteSize()
        for path, data in run.ctx.artifacts:
            if path in self.taken:  # the first collector in registry order keeps the path
                self.warnings.append(
                    (name, f"artifact {path!r} dropped: {self.taken[path]!r} has it")
                )
                continue
            self.taken[path] = name
            self.artifacts.append(Artifact(name, path, data))
            size += len(data)
        self.sizes[name] = size
        return Status(name=name, state=Status.OK, duration_ms=duration_ms)
