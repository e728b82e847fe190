"""The bundle format (DESIGN §3): write, read and verify signed ``.tar.zst`` bundles.

Typical use::

    with BundleWriter(out_dir, key=key, meta=meta) as w:
        w.add_bytes("facts.pb", data)
        written = w.finish(spec=spec, collectors=results)
    verified = verify_bundle(written.path, expected_key=key.public, keep=("facts.pb",))
"""

from __future__ import annotations

from agent.bundle.manifest import (
    FORMAT,
    KINDS,
    BundleKind,
    BundleMeta,
    MemberInfo,
    bundle_file_name,
    is_bundle_id,
    new_bundle_id,
)
from agent.bundle.reader import VerifiedBundle, verify_bundle
from agent.bundle.writer import BundleWriter, MemberWriter, WrittenBundle

__all__ = [
    "FORMAT",
    "KINDS",
    "BundleKind",
    "BundleMeta",
    "BundleWriter",
    "MemberInfo",
    "MemberWriter",
    "VerifiedBundle",
    "WrittenBundle",
    "bundle_file_name",
    "is_bundle_id",
    "new_bundle_id",
    "verify_bundle",
]
