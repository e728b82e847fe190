"""A bundle's identity, said once: the signed manifest is its source of truth.

The identity — bundle id, agent id, case, kind, live request id, agent version and the
signing key — is the manifest header (``MANIFEST.json``, signed). The ``Snapshot`` in
``facts.pb`` repeats it (``bundle_id`` … ``key_fingerprint``, ``collected_at``): the
report and the diff show it from there, ``casefile-collector show`` prints it, and
agents and collectors of earlier releases read it there, so the fields stay in the
format. They are no second, independent write, though:

* :func:`stamp_snapshot` fills them from the ``BundleMeta`` the manifest header is made
  from (``agent.oneshot`` builds that meta once, before anything is sealed);
* :func:`identity_problems` is how the collector checks a bundle it receives (upload and
  ``import``): a field the facts state differently from the manifest refuses the bundle,
  naming both values. A field the facts leave empty states nothing (a bundle made by
  other tools, a preview's facts) and is read from the manifest.

``collected_at`` is the manifest's ``created_at`` at finer precision and is not compared.
"""

from __future__ import annotations

from agent.bundle.manifest import BundleMeta, Manifest
from protos import facts_pb2

__all__ = ["identity_problems", "stamp_snapshot"]


def stamp_snapshot(snapshot: facts_pb2.Snapshot, meta: BundleMeta, key_fingerprint: str) -> None:
    """Write the manifest's identity into ``snapshot`` (``key_fingerprint`` "" for a
    preview, which cannot be sealed)."""
    snapshot.bundle_id = meta.bundle_id
    snapshot.agent_id = meta.agent_id
    snapshot.case_id = meta.case_id or ""
    snapshot.kind = meta.kind
    snapshot.request_id = meta.request_id or ""
    snapshot.collected_at.FromDatetime(meta.created_at)
    snapshot.agent_version = meta.agent_version
    snapshot.key_fingerprint = key_fingerprint


def identity_problems(snapshot: facts_pb2.Snapshot, manifest: Manifest) -> list[str]:
    """Where ``facts.pb`` states another identity than the signed manifest; empty when they agree."""
    pairs = (
        ("bundle_id", snapshot.bundle_id, manifest.bundle_id),
        ("agent_id", snapshot.agent_id, manifest.agent_id),
        ("case_id", snapshot.case_id, manifest.case_id or ""),
        ("kind", snapshot.kind, manifest.kind),
        ("request_id", snapshot.request_id, manifest.request_id or ""),
        ("agent_version", snapshot.agent_version, manifest.agent_version),
        ("key_fingerprint", snapshot.key_fingerprint, manifest.key.fingerprint),
    )
    return [
        f"facts.pb {name} {facts!r} differs from the signed manifest's {signed!r}"
        for name, facts, signed in pairs
        if facts and facts != signed
    ]
