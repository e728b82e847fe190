"""Bundles brought by hand: ``casefile-collector import FILE… [--case ID]``.

A bundle that travelled on a USB stick or by mail goes through the very checks an
upload does: the ingest service's ``Verifier`` (same limits, same worker process,
same ``verify_bundle``), then the same manifest checks, then the same blob store and
``insert_bundle`` transaction. What differs is who vouches for the key: an upload
proves possession of an enrolled key before its first byte, a file proves only that
its manifest was signed by the key inside it. So the signer is looked up among the
enrolled agents (and the agents a case token bound to a case); a key the collector
does not know is filed under the reserved agent ``UNENROLLED_AGENT_ID`` — never under
an agent of its own, which would make it enrolled — and every view says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from agent.errors import CasefileError, VerificationError
from collector.services.bundle_record import bundle_record, facts_of
from collector.services.ingest import IngestLimits, IngestService
from collector.services.sealed import CollectorRecipient, Opened, discard, open_sealed
from collector.storage import BlobStore, BundleRecord, Store
from collector.storage.errors import NotFound
from collector.storage.schema import agents

__all__ = ["UNENROLLED_AGENT_ID", "ImportRefused", "Imported", "import_bundles"]

# The reserved agent every bundle signed by an unknown key is filed under. Its key is
# no key (all zero bytes) and the collector refuses it as an uploader (collector.auth).
UNENROLLED_AGENT_ID = "ag_signer-not-enrolled"
UNENROLLED_LABEL = "signer not enrolled"
_UNENROLLED_FINGERPRINT = "signer-not-enrolled"
_CHUNK = 1024 * 1024


class ImportRefused(CasefileError):
    """A hand-carried bundle failed a check; nothing of it was stored."""


@dataclass(frozen=True)
class Imported:
    """What became of one file: its record and whether it was new."""

    path: Path
    record: BundleRecord
    inserted: bool

    @property
    def signer_enrolled(self) -> bool:
        return self.record.agent_id != UNENROLLED_AGENT_ID


def _hash(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _unenrolled_agent(store: Store) -> str:
    """The reserved agent row (made once; a foreign key needs it)."""
    try:
        store.get_agent(UNENROLLED_AGENT_ID)
        return UNENROLLED_AGENT_ID
    except NotFound:
        pass
    try:
        with store.engine.begin() as conn:
            conn.execute(
                agents.insert().values(
                    id=UNENROLLED_AGENT_ID,
                    hostname=UNENROLLED_LABEL,
                    public_key=b"\0" * 32,
                    fingerprint=_UNENROLLED_FINGERPRINT,
                    created_at=int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000),
                    token_id=None,
                    case_id=None,
                    last_seen_at=None,
                )
            )
    except IntegrityError:
        pass  # another import made it meanwhile
    return UNENROLLED_AGENT_ID


async def _import_one(service: IngestService, store: Store, blobs: BlobStore, path: Path, case: str | None) -> Imported:
    opened: Opened | None = None
    try:
        # A sealed (age) file is opened first; the bundle inside is what is checked and stored.
        opened = await open_sealed(path, service.sealed, path.name, blobs)
        return await _import_file(service, store, blobs, path, opened.path if opened else path, case)
    except VerificationError as exc:
        where = f" (member {exc.member})" if exc.member else ""
        raise ImportRefused(f"{path}: refused{where}: {exc}") from None
    finally:
        discard(opened)


async def _import_file(
    service: IngestService, store: Store, blobs: BlobStore, path: Path, source: Path, case: str | None
) -> Imported:
    """Import the bundle at ``source`` (``path`` itself, or what a sealed ``path`` held)."""
    # The record is built exactly as for an upload (ingest.bundle_record).
    size, sha256 = await asyncio.to_thread(_hash, source)
    # No expected key: the signature is checked against the key in the bundle,
    # which is then matched to what the collector knows below.
    vb = await service.verifier.check(source, None, size, path.name)
    manifest = vb.manifest
    bundle_id = manifest.bundle_id  # the reader checked its shape
    problems = []
    manifest_case = manifest.case_id or None
    if case and manifest_case and manifest_case != case:
        problems.append(f"manifest case_id {manifest_case!r} is not --case {case!r}")
    facts, facts_problems = facts_of(vb)
    problems += facts_problems
    if problems:
        raise ImportRefused(f"{path}: refused: " + "; ".join(problems))
    try:
        existing = await asyncio.to_thread(store.get_bundle, bundle_id)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.sha256 != sha256:
            raise ImportRefused(
                f"{path}: bundle {bundle_id} is already stored with sha256 {existing.sha256[:16]}…; "
                f"refusing different bytes ({sha256[:16]}…) under the same id"
            )
        return Imported(path, existing, False)

    try:
        signer = await asyncio.to_thread(store.get_agent_by_fingerprint, vb.public_key.fingerprint)
        agent_id = signer.id
        if signer.case_id is not None and (case or manifest_case) not in (None, signer.case_id):
            raise ImportRefused(
                f"{path}: signed by {signer.id}, which is bound to case {signer.case_id!r}, "
                f"not {case or manifest_case!r}"
            )
        case_id = case or manifest_case or signer.case_id
    except NotFound:
        agent_id = await asyncio.to_thread(_unenrolled_agent, store)
        case_id = case or manifest_case

    staged = await asyncio.to_thread(blobs.open_upload, bundle_id, size, sha256, owner=agent_id)
    try:
        with source.open("rb") as f:
            while chunk := f.read(_CHUNK):
                staged.append(chunk, autosync=False)
        staged.sync()
        if staged.sha256_hex() != sha256:
            staged.abort()
            raise ImportRefused(f"{path}: the file changed while it was imported; nothing stored")
        blob_key = await asyncio.to_thread(staged.commit)
    finally:
        staged.close()
    record = bundle_record(
        vb,
        facts,
        bundle_id=bundle_id,
        agent_id=agent_id,
        case_id=case_id,
        size=size,
        sha256=sha256,
        key_fingerprint=vb.public_key.fingerprint,
        file_name=path.name,
        blob_key=blob_key,
    )
    stored, inserted = await asyncio.to_thread(
        store.insert_bundle, record, facts_pb=vb.kept.get("facts.pb", b""), manifest_json=vb.manifest_bytes.decode()
    )
    return Imported(path, stored, inserted)


async def import_bundles(
    store: Store,
    blobs: BlobStore,
    paths: list[Path],
    case: str | None,
    limits: IngestLimits | None = None,
    sealed: CollectorRecipient | None = None,
) -> list[Imported | ImportRefused]:
    """Import each file in turn; one refused file does not stop the others.

    ``sealed``: the collector's age identity, which opens files sealed to it."""
    service = IngestService(store, blobs, limits)
    service.sealed = sealed
    results: list[Imported | ImportRefused] = []
    try:
        for path in paths:
            try:
                results.append(await _import_one(service, store, blobs, path, case))
            except ImportRefused as exc:
                results.append(exc)
            except CasefileError as exc:  # the store said no (a partial of the same id in flight, say)
                results.append(ImportRefused(f"{path}: not stored: {exc}"))
            except OSError as exc:
                results.append(ImportRefused(f"{path}: cannot read it: {exc.strerror or exc}"))
    finally:
        service.close()
    return results
