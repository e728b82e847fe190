"""What a collection asks for, checked whole before any collecting starts.

``casefile collect`` and the daemon's live collections (``agent.daemon.execute``) share
this: the collector options every run sets (the flight recorder's window, the name the
DNS test resolves), who an upload goes to and as whom, and what the person at the
keyboard agreed to. The command line only turns its options into these calls and a
``RequestError`` into a usage error (exit 2); nothing here prints or asks by itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.state import Enrollment, host_of

if TYPE_CHECKING:
    from agent.collect import CollectionSpec
    from agent.keys import SigningKey
    from agent.transport import UploadTarget

__all__ = [
    "CollectRequest",
    "OptionValue",
    "RequestError",
    "check_collect_request",
    "decide_consent",
    "key_values",
    "run_options",
    "send_later_command",
    "split_selectors",
    "upload_target",
]

OptionValue = str | int | float | bool

# How the person who started a collection agreed to its upload (recorded in the receipt).
SENDING = frozenset({"yes-flag", "interactive", "non-interactive"})


class RequestError(ValueError):
    """A collection request that cannot run as asked; ``hint`` names the option at fault."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def key_values(items: Iterable[str], flag: str, *, number: bool = False) -> dict[str, OptionValue]:
    """KEY=VALUE pairs from the command line; values become bool, int or float where they read as one."""
    out: dict[str, OptionValue] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise RequestError(f"{flag} {item!r}: expected KEY=VALUE")
        value: OptionValue = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    continue
        if number and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise RequestError(f"{flag} {item!r}: {raw!r} is not a number of seconds")
        out[key] = value
    return out


def split_selectors(values: Iterable[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(collector names, artifact path globs): a value with / * ? [ is a path glob.

    Names may also come comma-separated, as sos takes them (``--only logs,processes``).
    """
    names: list[str] = []
    globs: list[str] = []
    for v in values or ():
        if any(c in v for c in "/*?["):
            globs.append(v)
        else:
            listed = [n.strip() for n in v.split(",") if n.strip()]
            if not listed:  # an empty list must not mean "everything"
                raise RequestError(f"{v!r} names no collector")
            names.extend(listed)
    return tuple(names), tuple(globs)


def run_options(*, home: Path, recorder_since_s: float, collector_host: str) -> dict[str, OptionValue]:
    """The collector options every collection sets, one-shot or live."""
    options: dict[str, OptionValue] = {
        "recorder_home": str(home),  # the flight recorder's history, when this machine has one
        "recorder_since_s": recorder_since_s,
    }
    if collector_host:
        options["resolve_name"] = collector_host  # the DNS test asks for the name this agent has to reach
    return options


@dataclass(frozen=True)
class CollectRequest:
    """A checked ``casefile collect``: what to collect, and whether and where to upload."""

    only: tuple[str, ...]
    exclude: tuple[str, ...]
    only_paths: tuple[str, ...]
    exclude_paths: tuple[str, ...]
    options: Mapping[str, OptionValue]
    asked: frozenset[str]  # the --set keys, to warn about the ones no collector read
    budgets: Mapping[str, float]
    wants_upload: bool
    collector: str | None  # --upload, else the enrolled collector

    def spec(self, extra_options: Mapping[str, OptionValue] | None = None) -> CollectionSpec:
        """The collection spec; raises CollectionError for a bad option value."""
        from agent.collect import CollectionSpec
        from agent.collect.framework import DEFAULT_TOTAL_BUDGET_S

        # A budget asked for on the command line may outlast the run's default total.
        total = max([DEFAULT_TOTAL_BUDGET_S, *self.budgets.values()])
        return CollectionSpec(
            only=self.only,
            exclude=self.exclude,
            options={**self.options, **(extra_options or {})},
            budgets=dict(self.budgets),
            total_budget_s=total,
        )


def check_collect_request(
    *,
    case: str | None,
    only: Iterable[str] | None,
    exclude: Iterable[str] | None,
    since: str,
    logs_max: str,
    set_options: Iterable[str] | None,
    budgets: Iterable[str] | None,
    add_files: Iterable[Path] | None,
    upload: str | None,
    token: str | None,
    enrollment: Enrollment | None,
    preview: bool,
    home: Path,
) -> CollectRequest:
    """Check a whole command line before any collecting: a mistake costs seconds, not a run."""
    from agent.units import parse_duration, parse_size

    if case is not None and not case.isprintable():
        raise RequestError(f"--case {case!r} holds a control character")
    col_only, glob_only = split_selectors(only)
    col_exclude, glob_exclude = split_selectors(exclude)
    collector = upload or (enrollment.collector if enrollment else None)
    try:
        window_s = parse_duration(since).total_seconds()
        options: dict[str, OptionValue] = {
            "logs_since_s": window_s,
            "logs_max_bytes": parse_size(logs_max),
            **run_options(home=home, recorder_since_s=window_s, collector_host=""),
        }
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    asked = _set_options(set_options or ())
    options.update(asked)
    budget_s = {name: float(v) for name, v in key_values(budgets or (), "--budget", number=True).items()}
    wants_upload = not preview and (upload is not None or bool(token and enrollment))
    if token and upload is None and enrollment is None and not preview:
        raise RequestError("--token is the key to an upload: pass --upload HOST:PORT as well")
    if upload is not None and not token and enrollment is None and not preview:
        raise RequestError("--upload needs --token (a case token from support) or an enrolled agent")
    from agent.attachments import AttachmentError, check_attachment

    for attached in add_files or ():
        try:
            check_attachment(attached)
        except AttachmentError as exc:
            raise RequestError(str(exc)) from None
    if collector and host_of(collector):
        options.setdefault("resolve_name", host_of(collector))
    return CollectRequest(
        only=col_only,
        exclude=col_exclude,
        only_paths=glob_only,
        exclude_paths=glob_exclude,
        options=options,
        asked=frozenset(asked),
        budgets=budget_s,
        wants_upload=wants_upload,
        collector=collector,
    )


def _set_options(items: Iterable[str]) -> dict[str, OptionValue]:
    """``--set`` pairs, each checked against the option its collector declares."""
    items = list(items)
    if not items:
        return {}
    from agent.collect import registered_collectors
    from agent.collect.options import parse_set
    from agent.errors import CollectionError

    try:
        return parse_set(items, registered_collectors().options())
    except CollectionError as exc:
        raise RequestError(str(exc), hint="--set") from None


def upload_target(key: SigningKey, *, token: str | None, agent_id: str | None) -> UploadTarget:
    """As whom an upload goes: a case token when there is one, else the enrolled agent."""
    from agent.transport import UploadTarget

    if token:
        return UploadTarget(key=key, case_token=token)
    if agent_id:
        return UploadTarget(key=key, agent_id=agent_id)
    raise RequestError("uploading needs --token (a case token from support) or an enrolled agent")


def decide_consent(*, wants_upload: bool, yes: bool, interactive: bool, ask: Callable[[], bool]) -> tuple[str, bool]:
    """``(how the upload was agreed to, whether the preview was shown)``.

    ``--yes`` agrees; at a terminal ``ask`` shows the preview and asks; without one
    (a script, a service) the upload on the command line is the instruction itself, as
    ``sos report --batch --upload`` is, and the receipt says "non-interactive".
    """
    if not wants_upload:
        return "not-asked", False
    if yes:
        return "yes-flag", False
    if interactive:
        return ("interactive" if ask() else "declined"), True
    return "non-interactive", False


def send_later_command(
    path: Path,
    *,
    upload: str | None,
    ca_fingerprint: str | None,
    ca_file: Path | None,
    insecure: bool,
    home: Path | None,
    token: str | None,
) -> str:
    """The one command that sends a written bundle later (the token itself is never printed)."""
    return " ".join(
        [f"casefile upload {path}"]
        + ([f"--to {upload}"] if upload else [])
        + ([f"--ca-fingerprint {ca_fingerprint}"] if ca_fingerprint else [])
        + ([f"--ca-file {ca_file}"] if ca_file else [])
        + (["--insecure"] if insecure else [])
        + (["--home", str(home)] if home else [])
        # From the environment the token is found again; on the command line it is named only.
        + (["--token", "<the case token>"] if token and "CASEFILE_TOKEN" not in os.environ else [])
    )
