"""One collection run sealed into one bundle: the core of ``casefile collect``.

The same path serves a customer's one-shot run, a live snapshot and a technician's
local report; only ``kind`` and ``request_id`` differ.

Two phases, so the customer can see what leaves before it is sealed:

1. ``prepare_collection`` runs the collectors, then the privacy phase: every artifact
   streams through the ``Redactor`` into an anonymous spool, every string fact of the
   Snapshot is redacted, and the leak gate scans the result. Nothing is written to the
   output folder; the ``Preview`` lists exactly what ``seal`` would put in the bundle.
2. ``Prepared.seal`` writes those bytes into a signed bundle, with the redaction
   summary and the consent receipt in the manifest — or refuses (``LeakError``) when
   the gate found something and leaks were not allowed.

``collect_bundle`` does both at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.bundle import BundleMeta, BundleWriter, WrittenBundle, new_bundle_id
from agent.bundle.factsjson import facts_json
from agent.bundle.identity import stamp_snapshot
from agent.collect import (
    CollectionResult,
    CollectionSpec,
    RunningCollection,
    start_collection,
    statuses_to_dicts,
)
from agent.keys import SigningKey
from agent.privacy_phase import (
    MANIFEST_SOURCE,
    Member,
    Preview,
    PrivacyOptions,
    check_added,
    make_redactor,
    redact_artifacts,
    redact_json,
)
from agent.redact import (
    FACTS_ARTIFACT,
    RULESET_VERSION,
    LeakGate,
    RedactionError,
    Redactor,
    get_profile,
    redact_message,
)
from agent.version import __version__
from protos import facts_pb2

__all__ = [
    "Collected",
    "Consent",
    "Prepared",
    "Preview",
    "PrivacyOptions",
    "collect_bundle",
    "prepare_collection",
]



@dataclass(frozen=True)
class Consent:
    """What the customer was asked and answered; becomes the manifest's ``consent``.

    ``confirmed``: "interactive" (said yes at the prompt), "yes-flag" (--yes),
    "declined", "non-interactive" (--upload given with no terminal to ask: the command
    line is the instruction, as with ``sos report --batch --upload``) or "not-asked"
    (a local bundle; nothing is sent).
    """

    confirmed: str = "not-asked"
    displayed: bool = False
    upload_requested: bool = False
    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Collected:
    bundle: WrittenBundle
    result: CollectionResult
    redaction: Mapping[str, Any] = field(default_factory=dict)


class Prepared:
    """A redacted collection held in anonymous spools; ``seal`` it or ``close`` it."""

    def __init__(
        self,
        *,
        result: CollectionResult,
        snapshot: facts_pb2.Snapshot,
        members: list[Member],
        dropped: list[dict[str, str]],
        redactor: Redactor,
        gate: LeakGate,
        privacy: PrivacyOptions,
        meta: BundleMeta,
        added: list[dict[str, str]],
    ) -> None:
        self.result, self.snapshot, self.members, self.dropped = result, snapshot, members, dropped
        self.redactor, self.gate, self.privacy = redactor, gate, privacy
        self.meta, self.added = meta, added  # the manifest's header; the snapshot was stamped from it
        self.facts_pb = snapshot.SerializeToString(deterministic=True)
        self.facts_json = facts_json(snapshot)
        gate.scan_bytes("facts.pb", self.facts_pb)
        gate.scan_bytes("facts.json", self.facts_json)
        self.preview = self._preview()

    def _preview(self) -> Preview:
        hits = self.redactor.hits()
        listing: list[dict[str, Any]] = [
            {"path": "facts.pb", "kind": "facts", "size": len(self.facts_pb), "hits": hits.get(FACTS_ARTIFACT, {})},
            {"path": "facts.json", "kind": "facts", "size": len(self.facts_json), "hits": hits.get(FACTS_ARTIFACT, {})},
        ]
        listing += [
            {"path": m.path, "kind": m.kind, "size": m.size, "hits": hits.get(m.path, {})} for m in self.members
        ]
        encoded = json.dumps(listing, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return Preview(
            profile=self.privacy.profile,
            listing=tuple(listing),
            dropped=tuple(self.dropped),
            leaks=tuple(self.gate.report.as_list()),
            digest=hashlib.sha256(encoded).hexdigest(),
        )

    def seal(self, output_dir: Path, key: SigningKey, consent: Consent | None = None) -> Collected:
        """Write the signed bundle; raises LeakError (nothing written) on an unallowed leak."""
        consent = consent or Consent()
        if self.snapshot.key_fingerprint != key.fingerprint:
            raise RedactionError("this collection was prepared for preview only (no signing key); collect again")
        spec = redact_json(self.result.spec_dict(), self.redactor)
        warnings = [(n, self.redactor.redact_text(w, MANIFEST_SOURCE)) for n, w in self.result.warnings]
        collectors = statuses_to_dicts(self.snapshot.collectors, sizes=self.result.sizes, warnings=warnings)
        paths = {m.path for m in self.members}
        # A member the privacy profile dropped is listed under redaction.dropped instead;
        # a source cut to nothing (member "") has no member to drop and stays listed.
        truncated = [
            redact_json(t, self.redactor)
            for t in self.result.truncated()
            if t.get("member") == "" or t.get("member") in paths
        ]
        receipt = self._receipt(consent)
        outputs, analysis_error = self._analysis_outputs()
        for name, data in outputs.items():
            self.gate.scan_bytes(name, data)
        self.gate.scan_bytes(MANIFEST_SOURCE, json.dumps([spec, collectors, truncated, receipt]).encode("utf-8"))
        self.gate.scan_bytes(MANIFEST_SOURCE, self.snapshot.host.hostname.encode("utf-8"))
        gate_entry = self.gate.check(allow_leaks=self.privacy.allow_leaks)
        redaction: dict[str, Any] = {
            "profile": self.privacy.profile,
            "ruleset": RULESET_VERSION,
            "hits": self.redactor.hits(),
            "totals": self.redactor.totals(),
            "dropped": list(self.dropped),
            "leak_gate": gate_entry,
            "allow_leaks": self.privacy.allow_leaks,
        }
        output_dir.mkdir(parents=True, exist_ok=True)
        with BundleWriter(output_dir, key=key, meta=self.meta) as writer:
            writer.add_bytes("facts.pb", self.facts_pb)
            writer.add_bytes("facts.json", self.facts_json)
            for m in self.members:
                m.spool.seek(0)
                with writer.open_member(m.path) as out:
                    shutil.copyfileobj(m.spool, out, 1 << 20)
            for name, data in outputs.items():
                writer.add_bytes(name, data)
            if self.redactor.pseudo is not None:
                self.redactor.pseudo.flush()  # before sealing: a sent bundle must be unmaskable
            extra: dict[str, Any] = {"consent": receipt}
            if analysis_error:
                extra["analysis_error"] = analysis_error
            written = writer.finish(
                spec=spec,
                collectors=collectors,
                truncated=truncated,
                redaction=redaction,
                extra=extra,
            )
        return Collected(bundle=written, result=self.result, redaction=redaction)

    def _analysis_outputs(self) -> tuple[dict[str, bytes], str]:
        """findings.json and report.html from the redacted facts and logs.

        Built from what goes into the bundle (after redaction), never from raw data. An
        analysis failure is recorded in the manifest; it never costs the bundle.
        """
        from agent.analysis import BundleView, seal_outputs
        from agent.analysis.view import parse_log_line

        logs = [m for m in self.members if m.path.startswith("logs/") and m.path.endswith(".jsonl")]

        def records() -> Iterator[Any]:
            for m in logs:
                m.spool.seek(0)
                for line in m.spool:
                    rec = parse_log_line(line.decode("utf-8", "replace"))
                    if rec is not None:
                        yield rec

        try:
            view = BundleView.from_snapshot(self.snapshot, records if logs else (), label="this collection")
            return dict(seal_outputs(view)), ""
        except Exception as exc:  # the bundle matters more than its report
            return {}, f"{type(exc).__name__}: {exc}"

    def _receipt(self, consent: Consent) -> dict[str, Any]:
        try:
            who = getpass.getuser()
        except (OSError, KeyError):
            who = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
        if self.redactor.pseudo is not None and who not in ("root", "SYSTEM"):
            who = self.redactor.pseudonym("user", who, MANIFEST_SOURCE)
        return {
            "profile": self.privacy.profile,
            "only": [self.redactor.redact_text(x, MANIFEST_SOURCE) for x in consent.only],
            "exclude": [self.redactor.redact_text(x, MANIFEST_SOURCE) for x in consent.exclude],
            "added_files": self.added,
            "who": who,
            "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "preview_digest": self.preview.digest,
            "preview_displayed": consent.displayed,
            "confirmed": consent.confirmed,
            "upload_requested": consent.upload_requested,
        }

    def close(self) -> None:
        for m in self.members:
            with contextlib.suppress(OSError):
                m.spool.close()
        self.result.close()

    def __enter__(self) -> Prepared:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def prepare_collection(
    *,
    key: SigningKey | None,
    agent_id: str = "",
    case_id: str | None = None,
    kind: str = "one-shot",
    request_id: str | None = None,
    spec: CollectionSpec | None = None,
    privacy: PrivacyOptions | None = None,
    preview: bool = False,
    running: RunningCollection | None = None,
) -> Prepared:
    """Collect and redact into spools; ``key`` None (a preview) cannot be sealed later.

    ``running`` is a collection the caller started already (``start_collection``; then
    no ``spec``): the CLI starts it as soon as the command line is read, before it
    loads the rest. A collection that cannot be prepared is abandoned.
    """
    if running is not None and spec is not None:
        running.abandon()
        raise ValueError("pass a spec or a running collection, not both")
    try:
        privacy = privacy or PrivacyOptions()
        profile = get_profile(privacy.profile)
        added = check_added(privacy, profile.raw)
        if running is None:
            running = start_collection(spec or CollectionSpec())
        # The collectors spend most of the run asleep in their sampling windows: what
        # comes after them (the redactor, the modules sealing needs) is readied meanwhile.
        redactor = make_redactor(privacy, preview=preview)
        gate = LeakGate(redactor.harvested if profile.pseudonymise else None)
        if not preview:
            _load_sealing_modules()
        result = running.wait()
    except BaseException:
        if running is not None:
            running.abandon()
        raise
    try:
        return _prepare(result, redactor, gate, privacy, added, key, agent_id, case_id, kind, request_id)
    except BaseException:
        result.close()
        raise


def _load_sealing_modules() -> None:
    """Import what ``Prepared.seal`` imports lazily (the analysis, ~30 ms), ahead of time."""
    import agent.analysis  # noqa: F401


def _prepare(
    result: CollectionResult,
    redactor: Redactor,
    gate: LeakGate,
    privacy: PrivacyOptions,
    added: list[tuple[Path, str]],
    key: SigningKey | None,
    agent_id: str,
    case_id: str | None,
    kind: str,
    request_id: str | None,
) -> Prepared:
    redacted = redact_artifacts(result, redactor, gate, privacy, added)
    redactor.forget("member-paths")

    snapshot = facts_pb2.Snapshot()
    snapshot.CopyFrom(result.snapshot)
    for src_facts in snapshot.logs.sources:
        if src_facts.artifact in redacted.gone:
            src_facts.artifact = ""  # the counts stay; the member does not exist
    snapshot.logs.sources.extend(redacted.attached_sources)
    redact_message(snapshot, redactor)
    # The identity once: the manifest's header, which the facts repeat (agent.bundle.identity).
    meta = BundleMeta(
        bundle_id=new_bundle_id(),
        hostname=snapshot.host.hostname or "unknown",
        case_id=case_id,
        kind=kind,
        agent_id=agent_id,
        agent_version=__version__,
        created_at=dt.datetime.now(dt.UTC),
        request_id=request_id,
    )
    stamp_snapshot(snapshot, meta, key.fingerprint if key is not None else "")
    return Prepared(
        result=result,
        snapshot=snapshot,
        members=redacted.members,
        dropped=redacted.dropped,
        redactor=redactor,
        gate=gate,
        privacy=privacy,
        meta=meta,
        added=redacted.added,
    )


def collect_bundle(
    *,
    key: SigningKey,
    output_dir: Path,
    agent_id: str = "",
    case_id: str | None = None,
    kind: str = "one-shot",
    request_id: str | None = None,
    spec: CollectionSpec | None = None,
    privacy: PrivacyOptions | None = None,
    consent: Consent | None = None,
) -> Collected:
    """Run the collectors, redact, gate, and write one signed bundle into ``output_dir``."""
    with prepare_collection(
        key=key,
        agent_id=agent_id,
        case_id=case_id,
        kind=kind,
        request_id=request_id,
        spec=spec,
        privacy=privacy,
    ) as prepared:
        return prepared.seal(output_dir, key, consent)
