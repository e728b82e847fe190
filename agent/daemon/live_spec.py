"""A live request's collection spec, judged by the customer's policy before anything runs.

A request that names ``spec:<name>@<version>`` carries the signed spec
(``SnapshotRequest.spec_envelope``). The daemon verifies it here — signed by a key in
``spec_signers``, intact, not expired, the very spec the scope names, and listed in
``live_specs`` (by name or its signer's ``sha256:<hex>/*``) — and records its name,
version and signer in the history whatever the outcome. The collection child verifies
the same bytes again before it builds the spec's collector (``agent.daemon.execute``).

``agent.specs`` (YAML, the regex engine) is imported only when a request names a spec,
so the resident daemon does not carry it otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.scopes import spec_allowed_live, spec_of

__all__ = ["SpecCheck", "check_live_spec"]


@dataclass(frozen=True)
class SpecCheck:
    denial: str | None  # why it may not run; None: it may
    record: dict[str, Any] | None  # name, version, signer, sha256 for the history (None: unreadable)


def check_live_spec(
    scopes: tuple[str, ...], envelope: bytes, signers: tuple[str, ...], live_specs: tuple[str, ...]
) -> SpecCheck | None:
    """None when the request names no spec; else whether this machine lets it run."""
    named = next((n for n in map(spec_of, scopes) if n is not None), None)
    if named is None:
        return None
    if not envelope:
        return SpecCheck(f"the request names spec {named[0]}@{named[1]} but carries no signed spec", None)
    from agent.specs import SpecRefused, verify_spec

    try:
        signed = verify_spec(envelope, signers, where=f"spec {named[0]}@{named[1]}")
    except SpecRefused as exc:
        return SpecCheck(str(exc), None)
    spec = signed.spec
    record = {"name": spec.name, "version": spec.version, "signer": signed.signer, "sha256": signed.spec_sha256}
    if (spec.name, spec.version) != named:
        return SpecCheck(f"the signed spec is {spec.name}@{spec.version}, not the {named[0]}@{named[1]} named", record)
    return SpecCheck(spec_allowed_live(spec.name, signed.signer, live_specs), record)
