"""One collection run sealed into one bundle: the core of ``casefile collect``.

The same path serves a customer's one-shot run, a live snapshot and a technician's
local report; only ``kind`` and ``request_id`` differ.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from agent.bundle import BundleMeta, BundleWriter, WrittenBundle, new_bundle_id
from agent.collect import CollectionResult, CollectionSpec, run_collection
from agent.keys import SigningKey
from agent.version import __version__

__all__ = ["Collected", "collect_bundle"]


@dataclass(frozen=True)
class Collected:
    bundle: WrittenBundle
    result: CollectionResult


def collect_bundle(
    *,
    key: SigningKey,
    output_dir: Path,
    agent_id: str = "",
    case_id: str | None = None,
    kind: str = "one-shot",
    request_id: str | None = None,
    spec: CollectionSpec | None = None,
) -> Collected:
    """Run the collectors and write one signed bundle into ``output_dir``."""
    result = run_collection(spec or CollectionSpec())
    created = dt.datetime.now(dt.UTC)
    snapshot = result.snapshot
    snapshot.bundle_id = new_bundle_id()
    snapshot.agent_id = agent_id
    snapshot.case_id = case_id or ""
    snapshot.kind = kind
    snapshot.request_id = request_id or ""
    snapshot.collected_at.FromDatetime(created)
    snapshot.agent_version = __version__
    snapshot.key_fingerprint = key.fingerprint
    meta = BundleMeta(
        bundle_id=snapshot.bundle_id,
        hostname=snapshot.host.hostname or "unknown",
        case_id=case_id,
        kind=kind,
        agent_id=agent_id,
        agent_version=__version__,
        created_at=created,
        request_id=request_id,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    with BundleWriter(output_dir, key=key, meta=meta) as writer:
        writer.add_bytes("facts.pb", snapshot.SerializeToString(deterministic=True))
        facts_json = json_format.MessageToJson(snapshot, indent=1, sort_keys=True)
        writer.add_bytes("facts.json", (facts_json + "\n").encode("utf-8"))
        for _collector, path, data in result.artifacts:
            writer.add_bytes(path, data)
        written = writer.finish(
            spec=result.spec_dict(),
            collectors=result.status_dicts(),
            truncated=[],
            redaction=None,
        )
    return Collected(bundle=written, result=result)
