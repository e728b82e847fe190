"""The collection framework: what a collector declares and what it gets while running.

The registry (``registry.py``) finds collectors; the runner (``runner.py``) runs them.

A collector is a small class that *declares* its name, platforms, time budget and the
``Snapshot`` field it fills, and implements ``collect(ctx)`` returning a NEW message of
that type. The runner (``run_collection``) starts every selected collector at once, each
in its own thread, waits up to each one's budget, and records a ``CollectorStatus`` per
collector. One broken, slow or unsupported collector never breaks a collection.

A collector that outlives its budget is abandoned (see ``runner.py``), so it must build
its own message and never touch a shared one. Raw output goes in as artifacts:
``ctx.add_artifact`` for small bytes, ``ctx.add_artifact_file`` for a file written into
``ctx.temp_path(...)`` (logs: bounded memory). Commands run through ``command.py`` only.

psutil's ``cpu_percent``, ``cpu_times_percent`` and ``process_iter`` keep module-global
state that is not thread-safe (psutil #1991, #1667). Only the ``cpu`` collector may call
``cpu_percent``/``cpu_times_percent``; only the ``processes`` collector calls
``process_iter`` (``timeseries`` uses ``cpu_times`` deltas). Everything else in psutil
used here is stateless.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from google.protobuf.message import Message

from agent.collect.artifacts import ARTIFACT_KINDS, Artifact, ArtifactKind, TempArea
from agent.collect.options import AnyOption, FloatOption, IntOption, Option, StrOption, V, option_problems
from agent.collect.spec import DEFAULT_TOTAL_BUDGET_S as DEFAULT_TOTAL_BUDGET_S
from agent.collect.spec import MAX_BUDGET_OVERRIDE_S as MAX_BUDGET_OVERRIDE_S
from agent.collect.spec import CollectionSpec as CollectionSpec
from agent.collect.spec import OptionValue as OptionValue
from agent.errors import CollectionError
from agent.plugins import describe_exception as describe_exception  # one error format, plugin or not
from agent.plugins import truncate_error as truncate_error
from protos import facts_pb2

KNOWN_PLATFORMS: frozenset[str] = frozenset({"linux", "darwin", "windows"})
ALL_PLATFORMS: frozenset[str] = KNOWN_PLATFORMS
MAX_BUDGET_S = 60.0
# Snapshot message fields that the bundle writer owns, not collectors.
RESERVED_FIELDS = frozenset({"collected_at", "collectors"})
# Bundle members the bundle writer owns (DESIGN §3); no artifact may take these paths.
RESERVED_MEMBERS = frozenset(
    {"facts.pb", "facts.json", "findings.json", "report.html", "MANIFEST.json", "MANIFEST.sig"}
)
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")

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
    # An observer watches the run rather than gathering on its own (a time series over
    # the collection window): ``ctx.wait_for_others`` tells it when every collector
    # that is not an observer has finished, and the run waits for observers last.
    observes: ClassVar[bool] = False
    # The options it reads (``agent.collect.options``): ``ctx.get(OPTION)`` reads one, and
    # ``--set``, ``casefile options`` and the README's table come from these declarations.
    options: ClassVar[tuple[AnyOption, ...]] = ()

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
        problems.append(f"platforms {platforms!r} is not a non-empty subset of {sorted(KNOWN_PLATFORMS)}")
    if not isinstance(obj.default, bool):
        problems.append(f"default {obj.default!r} is not a bool")
    if not isinstance(obj.observes, bool):
        problems.append(f"observes {obj.observes!r} is not a bool")
    problems.extend(_facts_problems(obj.facts_field, obj.facts_type))
    problems.extend(option_problems(obj.options))
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


class _ReadRecorder(Mapping[str, OptionValue]):
    """The spec's options, noting each key a collector looks at (``CollectionResult.unread_options``)."""

    def __init__(self, options: Mapping[str, OptionValue], reads: set[str]) -> None:
        self._options, self._reads = options, reads

    def __getitem__(self, key: str) -> OptionValue:
        self._reads.add(key)
        return self._options[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self._reads.add(key)
        return key in self._options

    def __iter__(self) -> Iterator[str]:
        self._reads.update(self._options)  # a collector that walks them all has seen them all
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)


class CollectContext:
    """What a running collector gets: options, its deadline, warnings, artifacts, temp files."""

    def __init__(
        self,
        collector: str,
        spec: CollectionSpec,
        deadline: float,
        *,
        temp_area: TempArea | None = None,
        others_done: threading.Event | None = None,
        cancelled: threading.Event | None = None,
        declared: tuple[AnyOption, ...] = (),
    ) -> None:
        self.collector = collector
        self._declared = {opt.name: opt for opt in declared}
        self.spec = spec
        self.deadline = deadline  # time.monotonic() value
        self._others_done = others_done
        # Set when the run is given up (``RunningCollection.abandon``): pass it to
        # ``run_command(cancel=...)`` so a long command is killed instead of finishing.
        self.cancelled = cancelled if cancelled is not None else threading.Event()
        self._warnings: list[str] = []
        self._artifacts: dict[str, Artifact] = {}
        self.plugin_facts: str | None = None
        self.option_reads: set[str] = set()  # option keys this collector looked at
        # A context made outside a run (tests, tools) owns its area; it goes with the context.
        self._temp = temp_area if temp_area is not None else TempArea()

    @property
    def options(self) -> Mapping[str, OptionValue]:
        return _ReadRecorder(self.spec.options, self.option_reads)

    def remaining(self) -> float:
        """Seconds left in this collector's budget (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def wait_for_others(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the run's other collectors to finish.

        True once every collector that is not an observer has finished (or been given
        up on at its budget). Outside a run there are no others: True at once.
        """
        if self._others_done is None:
            return True
        return self._others_done.wait(max(0.0, timeout))

    def warn(self, message: str) -> None:
        """Record a non-fatal problem; the collector's status stays OK."""
        self._warnings.append(message)

    def temp_path(self, name: str) -> Path:
        """A path in this run's temp directory for a file to hand over with add_artifact_file.

        The directory is private to this collector and removed after the bundle is
        written; ``name`` is one plain file name.
        """
        if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
            raise CollectionError(f"collector {self.collector!r}: bad temp file name {name!r}")
        return self._temp.subdir(self.collector) / name

    def set_plugin_facts(self, json_text: str) -> None:
        """Facts of a collector without a typed Snapshot field: a JSON object, stored in
        ``Snapshot.plugin_facts[<collector name>]`` (plugins use this)."""
        try:
            parsed = json.loads(json_text)
        except ValueError as exc:
            raise CollectionError(f"collector {self.collector!r}: plugin facts are not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise CollectionError(f"collector {self.collector!r}: plugin facts must be a JSON object")
        self.plugin_facts = json_text

    def add_artifact(self, path: str, data: bytes, *, kind: ArtifactKind = "file") -> None:
        """Ask for raw ``data`` in the bundle as member ``path`` (relative, e.g. "logs/x.txt")."""
        content = bytes(data)
        self._add(Artifact(self.collector, path, _kind(self.collector, kind), len(content), content))

    def add_artifact_file(self, path: str, src: Path, *, kind: ArtifactKind = "log") -> None:
        """Ask for the file ``src`` in the bundle as member ``path``, streamed, not loaded.

        ``src`` must be complete and stay unchanged until the bundle is written (a file
        from ``temp_path`` is the usual case).
        """
        try:
            size = Path(src).stat().st_size
        except OSError as exc:
            raise CollectionError(f"collector {self.collector!r}: artifact source {src} unreadable: {exc}") from None
        self._add(Artifact(self.collector, path, _kind(self.collector, kind), size, source=Path(src)))

    def _add(self, artifact: Artifact) -> None:
        path = artifact.path
        try:
            _check_artifact_path(path)
        except ValueError as exc:
            raise CollectionError(f"collector {self.collector!r}: artifact path {path!r} {exc}") from None
        if path in self._artifacts:
            raise CollectionError(f"collector {self.collector!r}: artifact {path!r} added twice")
        self._artifacts[path] = artifact

    def get(self, option: Option[V]) -> V:
        """The run's value of a declared option, checked against its declaration, else its default."""
        if option.name not in self.options:
            return option.default
        return option.check(self.options[option.name])

    def _declared_or(self, key: str, made: Callable[[], AnyOption] | None) -> AnyOption:
        """This collector's declaration of ``key``; else (a plugin written before declarations)
        one made from the default and bounds the call gives."""
        declared = self._declared.get(key)
        if declared is not None:
            return declared
        if made is None:
            raise CollectionError(f"collector {self.collector!r} reads option {key!r} without declaring it")
        return made()

    def float_option(
        self, key: str, default: float | None = None, *, minimum: float = 0.0, maximum: float = MAX_BUDGET_S
    ) -> float:
        """Option ``key`` as a float: as declared in ``Collector.options``, else within [minimum, maximum]."""
        made = None if default is None else (lambda: FloatOption(key, default, key, minimum=minimum, maximum=maximum))
        return float(self.get(self._declared_or(key, made)))

    def int_option(self, key: str, default: int | None = None, *, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
        """Option ``key`` as an int: as declared, else within [minimum, maximum]."""
        made = None if default is None else (lambda: IntOption(key, default, key, minimum=minimum, maximum=maximum))
        return int(self.get(self._declared_or(key, made)))

    def str_option(self, key: str, default: str | None = None) -> str:
        """Option ``key`` as text: as declared, else with the default given here."""
        made = None if default is None else (lambda: StrOption(key, default, key))
        return str(self.get(self._declared_or(key, made)))

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(self._warnings)

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        return tuple(self._artifacts.values())


def _kind(collector: str, kind: object) -> ArtifactKind:
    if kind not in ARTIFACT_KINDS:
        raise CollectionError(f"collector {collector!r}: artifact kind {kind!r} is not one of {sorted(ARTIFACT_KINDS)}")
    return kind  # type: ignore[return-value]  # checked just above


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



