"""The privacy phase of a collection (``agent.oneshot``): every artifact and every file
the customer attached streams through the ``Redactor`` into an anonymous spool and
past the leak gate, and what would be sent is listed in a ``Preview``. Core files
(artifact kind ``core``, only when the owner allowed them) are the one exception: copied
byte for byte, not scanned, and dropped under ``private`` and ``facts-only``.

Nothing here writes to the output folder; ``agent.oneshot.Prepared`` seals the spools.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.attachments import check_attachment, open_attachment
from agent.collect import CollectionResult
from agent.redact import (
    Harvested,
    LeakGate,
    Pseudonymizer,
    RedactionError,
    Redactor,
    get_profile,
    harvest_host,
    load_or_create_redact_key,
)
from protos import facts_pb2

__all__ = [
    "MANIFEST_SOURCE",
    "Member",
    "Preview",
    "PrivacyOptions",
    "Redacted",
    "check_added",
    "make_redactor",
    "redact_artifacts",
    "redact_json",
]

SPOOL_MAX = 1 << 20
MANIFEST_SOURCE = "MANIFEST.json"  # the redactor's source name for text going into the manifest


@dataclass(frozen=True)
class PrivacyOptions:
    """How the privacy phase runs. ``home`` holds the pseudonym key and the unmask map.

    ``only_paths``/``exclude_paths`` are artifact path globs (``logs/*``, ``commands``);
    ``add_files`` become ``files/<basename>`` members of kind ``file``.
    """

    profile: str = "standard"
    home: Path | None = None
    only_paths: tuple[str, ...] = ()
    exclude_paths: tuple[str, ...] = ()
    add_files: tuple[Path, ...] = ()
    allow_leaks: bool = False
    harvested: Harvested | None = None  # None: harvest this host


@dataclass(frozen=True)
class Preview:
    """Every member the bundle would hold, after redaction; ``digest`` is over ``listing``."""

    profile: str
    listing: tuple[dict[str, Any], ...]
    dropped: tuple[dict[str, str], ...]
    leaks: tuple[dict[str, object], ...]
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "members": list(self.listing),
            "dropped": list(self.dropped),
            "leak_gate": {"result": "fail" if self.leaks else "pass", "leaks": list(self.leaks)},
            "preview_digest": self.digest,
        }


@dataclass
class Member:
    """One redacted member waiting in its spool."""

    path: str
    kind: str
    size: int
    spool: IO[bytes]


@dataclass
class Redacted:
    """What the privacy phase made of a collection's artifacts and the attached files."""

    members: list[Member]
    dropped: list[dict[str, str]]  # left out by the profile or --only/--exclude, and why
    gone: set[str]  # their original paths
    attached_sources: list[facts_pb2.LogSource]  # attached files that read as logs
    added: list[dict[str, str]]  # the manifest's record of the attached files


def redact_artifacts(
    result: CollectionResult,
    redactor: Redactor,
    gate: LeakGate,
    privacy: PrivacyOptions,
    added: list[tuple[Path, str]],
) -> Redacted:
    """Every artifact the profile and selection keep, and every attached file, redacted into spools."""
    profile = redactor.profile
    members: list[Member] = []
    dropped: list[dict[str, str]] = []
    gone: set[str] = set()
    attached_sources: list[facts_pb2.LogSource] = []

    def spool_in(path: str, kind_: str, src: IO[bytes]) -> None:
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX, mode="w+b")  # noqa: SIM115 - closed by Prepared
        size = redactor.redact_stream(src, spool, path)
        spool.seek(0)
        gate.scan_stream(path, spool)
        members.append(Member(path, kind_, size, spool))

    def spool_verbatim(path: str, src: IO[bytes]) -> None:
        # A core file (binary process memory, often compressed) the owner allowed: text
        # redaction would only corrupt it and the gate would read noise, so neither runs;
        # the preview lists it with its size before anything is sealed.
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX, mode="w+b")  # noqa: SIM115 - closed by Prepared
        shutil.copyfileobj(src, spool, 1 << 20)
        size = spool.tell()
        spool.seek(0)
        members.append(Member(path, "core", size, spool))

    try:
        for art in result.artifacts:
            reason = ""
            if art.kind == "core" and (not profile.raw or profile.pseudonymise):
                reason = f"profile {profile.name} never includes core files (process memory cannot be redacted)"
            elif not profile.raw and art.kind in ("log", "command"):
                reason = f"profile {profile.name} keeps no raw {art.kind} output"
            elif privacy.only_paths and not matches(art.path, privacy.only_paths):
                reason = "not selected by --only"
            elif matches(art.path, privacy.exclude_paths):
                reason = "excluded by --exclude"
            path = redactor.redact_text(art.path, "member-paths")
            if reason:
                gone.add(art.path)
                dropped.append({"path": path, "kind": art.kind, "reason": reason})
                continue
            with art.open() as src:
                if art.kind == "core":
                    spool_verbatim(path, src)
                else:
                    spool_in(path, art.kind, src)
        added_entries: list[dict[str, str]] = []
        taken = {s.name for s in result.snapshot.logs.sources}
        for source, member in added:
            path = redactor.redact_text(member, "member-paths")
            with open_attachment(source) as attached_file:
                spool_in(path, "file", attached_file)
            entry = {"member": path, "source": redactor.redact_text(str(source), MANIFEST_SOURCE), "log": ""}
            # A file that reads as a log also joins the timeline, as a log_files source would.
            attached = attached_log_of(source, taken, result.snapshot.logs, privacy)
            if attached is not None:
                facts, jsonl = attached
                taken.add(facts.name)
                facts.artifact = redactor.redact_text(f"logs/{facts.name}.jsonl", "member-paths")
                try:
                    with open(jsonl, "rb") as src:
                        spool_in(facts.artifact, "log", src)
                finally:
                    jsonl.unlink(missing_ok=True)
                attached_sources.append(facts)
                entry["log"] = facts.artifact
            added_entries.append(entry)
    except BaseException:
        for m in members:
            m.spool.close()
        raise
    return Redacted(members, dropped, gone, attached_sources, added_entries)


def redact_json(obj: Any, redactor: Redactor) -> Any:
    if isinstance(obj, str):
        return redactor.redact_text(obj, MANIFEST_SOURCE)
    if isinstance(obj, dict):  # a string whose key names a secret goes whole, as the gate expects
        return {
            k: redactor.redact_field(str(k), v, MANIFEST_SOURCE) if isinstance(v, str) else redact_json(v, redactor)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact_json(v, redactor) for v in obj]
    return obj


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def make_redactor(privacy: PrivacyOptions, *, preview: bool) -> Redactor:
    profile = get_profile(privacy.profile)
    if not profile.pseudonymise:
        return Redactor(profile)
    harvested = privacy.harvested if privacy.harvested is not None else harvest_host()
    if privacy.home is None:
        raise RedactionError(f"profile {profile.name!r} needs the agent home for its pseudonym key")
    # A preview writes nothing: without a key yet, it pseudonymises with a throwaway one.
    key = load_or_create_redact_key(privacy.home, create=not preview)
    if key is None:
        return Redactor(profile, harvested=harvested, pseudonymizer=Pseudonymizer(secrets.token_bytes(32)))
    pseudo = Pseudonymizer(key, home=None if preview else privacy.home)
    return Redactor(profile, harvested=harvested, pseudonymizer=pseudo)


def check_added(privacy: PrivacyOptions, raw: bool) -> list[tuple[Path, str]]:
    if privacy.add_files and not raw:
        raise RedactionError(
            f"--add-file is refused under profile {privacy.profile!r}: it would attach raw file content; "
            "use --profile private (pseudonymised) or standard"
        )
    out: list[tuple[Path, str]] = []
    for path in privacy.add_files:
        check_attachment(path)
        member = f"files/{path.name}"
        if any(m == member for _, m in out):
            raise RedactionError(f"--add-file {path}: another added file is also named {path.name!r}")
        out.append((path, member))
    return out


def attached_log_of(
    source: Path, taken: set[str], logs: facts_pb2.LogsFacts, privacy: PrivacyOptions
) -> tuple[facts_pb2.LogSource, Path] | None:
    """``source`` parsed as a text log (raw JSONL in a temp file), or None when it is not one."""
    from agent.collect.logparse.attached import attached_log, source_name

    name = source_name(source, taken)
    member = f"logs/{name}.jsonl"
    if matches(member, privacy.exclude_paths) or (privacy.only_paths and not matches(member, privacy.only_paths)):
        return None
    now = dt.datetime.now(dt.UTC)
    since = logs.since.ToDatetime(dt.UTC) if logs.HasField("since") else now - dt.timedelta(days=1)
    cap = logs.max_bytes_per_source or 8 << 20
    fd, tmp = tempfile.mkstemp(prefix="casefile-attached-", suffix=".jsonl")
    os.close(fd)
    facts = attached_log(source, Path(tmp), name=name, since=since, max_bytes=cap)
    if facts is None:
        Path(tmp).unlink(missing_ok=True)
        return None
    return facts, Path(tmp)
