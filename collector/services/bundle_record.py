"""A verified bundle's metadata row and receipt: one reading of its manifest for an
upload (``collector.services.ingest``) and for a bundle brought by hand
(``collector.services.handcarried``), and the stored row an upload of the same id meets."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import grpc
from google.protobuf.message import DecodeError

from agent.bundle import VerifiedBundle
from agent.bundle.identity import identity_problems
from collector.edge import Rejected
from collector.storage import BundleRecord, Store
from collector.storage.counts import collector_counts
from collector.storage.errors import NotFound
from collector.timestamps import timestamp_us
from collector.upload_auth import UploadIdentity
from protos import collector_pb2, facts_pb2

__all__ = ["bundle_record", "facts_of", "receipt_for", "stored_by", "stored_or_open"]


def receipt_for(rec: BundleRecord) -> collector_pb2.Receipt:
    return collector_pb2.Receipt(
        bundle_id=rec.bundle_id,
        sha256=rec.sha256,
        size=rec.size,
        agent_id=rec.agent_id,
        hostname=rec.hostname,
        case_id=rec.case_id or "",
        received_at=timestamp_us(rec.received_at_us),
        key_fingerprint=rec.key_fingerprint,
    )


def facts_of(vb: VerifiedBundle) -> tuple[facts_pb2.Snapshot, list[str]]:
    """The bundle's ``facts.pb`` and why it must be refused: the facts do not parse, or
    they state another identity than the signed manifest (``agent.bundle.identity``)."""
    facts = facts_pb2.Snapshot()
    try:
        facts.ParseFromString(vb.kept.get("facts.pb", b""))
    except DecodeError as exc:
        return facts, [f"member facts.pb does not parse as a Snapshot: {exc}"]
    return facts, identity_problems(facts, vb.manifest)


def bundle_record(
    vb: VerifiedBundle,
    facts: facts_pb2.Snapshot,
    *,
    bundle_id: str,
    agent_id: str,
    case_id: str | None,
    size: int,
    sha256: str,
    key_fingerprint: str,
    file_name: str,
    blob_key: str,
) -> BundleRecord:
    """The metadata row of a verified bundle: one reading of its manifest for an upload and
    for a bundle brought by hand (``collector.services.handcarried``)."""
    manifest = vb.manifest
    ok, skipped, failed = collector_counts(manifest.collectors)
    now = dt.datetime.now(dt.UTC)
    return BundleRecord(
        bundle_id=bundle_id,
        agent_id=agent_id,
        # The reader checked every field's type; an empty host name falls back to the facts'.
        hostname=manifest.hostname or facts.host.hostname or "unknown",
        case_id=case_id,
        kind=manifest.kind,
        created_at_us=int(manifest.created.timestamp() * 1_000_000),
        received_at_us=int(now.timestamp() * 1_000_000),
        size=size,
        sha256=sha256,
        key_fingerprint=key_fingerprint,
        agent_version=manifest.agent_version,
        file_name=_safe_file_name(file_name, bundle_id),
        collectors_ok=ok,
        collectors_failed=failed,
        blob_key=blob_key,
        os=facts.host.os_release or facts.host.os,
        origin_fingerprint=vb.public_key.fingerprint,
        collectors_skipped=skipped,
    )


_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


def _safe_file_name(name: str, bundle_id: str) -> str:
    return name if _NAME.fullmatch(name) and name.endswith(".tar.zst") else f"casefile-{bundle_id}.tar.zst"


async def stored_by(
    store: Store, bundle_id: str, sha256: str, identity: UploadIdentity, *, sealed: bool = False, fresh: bool = True
) -> BundleRecord | None:
    """The stored bundle ``bundle_id`` if ``identity`` stored it.

    Anyone else is answered as for a bundle never stored: a receipt names the agent,
    host, case and key, and even whether an id exists is not theirs to learn.
    Other bytes under a stored id are refused, unless they may be ``sealed``: a sealed
    file never hashes like the bundle inside it, so the record is returned as it is and
    the caller compares once the file is opened (``collector.services.sealed.resent``).
    Unless ``fresh``, the record read with the identity serves (``UploadIdentity.stored``).
    """
    if not fresh and identity.looked_up == bundle_id:
        if identity.stored is None:
            return None
        rec = identity.stored
    else:
        try:
            rec = await asyncio.to_thread(store.get_bundle, bundle_id)
        except NotFound:
            return None
    if rec.agent_id != identity.agent.id:
        return None
    if rec.sha256 != sha256 and not sealed:
        raise Rejected(
            grpc.StatusCode.ALREADY_EXISTS,
            f"bundle {bundle_id} is already stored with sha256 {rec.sha256[:16]}…; "
            f"refusing different bytes ({sha256[:16]}…) under the same id",
        )
    return rec



async def stored_or_open(
    store: Store, bundle_id: str, sha256: str, identity: UploadIdentity, sealed: bool
) -> BundleRecord | None:
    """The stored bundle if this upload (``sha256``) is it again. Else None once a new
    bundle may come: not under a used-up (or too often refused) case token, and only
    after a stored one of other bytes when those may be it ``sealed``."""
    existing = await stored_by(store, bundle_id, sha256, identity, sealed=sealed, fresh=False)
    if existing is not None and existing.sha256 == sha256:
        return existing
    if existing is None and identity.closed is not None:
        raise Rejected(grpc.StatusCode.UNAUTHENTICATED, f"bundle {bundle_id}: {identity.closed}")
    return None
