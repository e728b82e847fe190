"""Signed collection specs kept by the collector (migration step 9).

``casefile-collector spec add`` verifies a signed spec (intact, not expired; which
signers an agent trusts is its own policy's business) and stores the envelope byte for
byte: what an agent receives is exactly what support signed. A name and version is
stored once; adding the same again is refused unless it is the very same envelope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select

from collector.storage.base import StoreBase
from collector.storage.errors import InvalidArgument, NotFound
from collector.storage.schema import to_micros
from collector.storage.specs_schema import create_spec_tables, specs

__all__ = ["SpecMethods", "SpecRecord", "create_spec_tables"]


@dataclass(frozen=True)
class SpecRecord:
    name: str
    version: int
    signer: str
    sha256: str
    description: str
    envelope: bytes
    signed_at_us: int
    expires_at_us: int
    added_at_us: int
    added_by: str


def _rec(row: Row[Any]) -> SpecRecord:
    m = row._mapping
    return SpecRecord(
        name=m["name"],
        version=m["version"],
        signer=m["signer"],
        sha256=m["sha256"],
        description=m["description"],
        envelope=str(m["envelope"]).encode("ascii"),
        signed_at_us=m["signed_at"],
        expires_at_us=m["expires_at"],
        added_at_us=m["added_at"],
        added_by=m["added_by"],
    )


class SpecMethods(StoreBase):
    """Adding, listing and reading signed specs."""

    def add_spec(self, signed: Any, *, added_by: str) -> SpecRecord:
        """Store a verified ``agent.specs.SignedSpec``; InvalidArgument if its name and
        version are taken by another envelope."""
        try:
            envelope = signed.envelope.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidArgument("a signed spec is ASCII JSON") from None
        spec = signed.spec
        with self._write() as conn:
            found = conn.execute(
                select(specs).where(specs.c.name == spec.name, specs.c.version == spec.version)
            ).first()
            if found is not None:
                if found._mapping["envelope"] == envelope:
                    return _rec(found)
                raise InvalidArgument(
                    f"spec {spec.name} v{spec.version} is already stored (signed by {found._mapping['signer']}); "
                    "raise the version to replace it"
                )
            conn.execute(
                specs.insert().values(
                    name=spec.name,
                    version=spec.version,
                    signer=signed.signer,
                    sha256=signed.spec_sha256,
                    description=spec.description,
                    envelope=envelope,
                    signed_at=to_micros(signed.signed_at),
                    expires_at=to_micros(signed.expires_at),
                    added_at=self._now(),
                    added_by=added_by,
                )
            )
        return self.get_spec(spec.name, spec.version)

    def list_specs(self) -> list[SpecRecord]:
        with self._read() as conn:
            rows = conn.execute(select(specs).order_by(specs.c.name, specs.c.version.desc())).all()
        return [_rec(r) for r in rows]

    def get_spec(self, name: str, version: int | None = None) -> SpecRecord:
        """A spec by name: the given version, or the newest."""
        stmt = select(specs).where(specs.c.name == name)
        stmt = stmt.where(specs.c.version == version) if version is not None else stmt
        with self._read() as conn:
            row = conn.execute(stmt.order_by(specs.c.version.desc()).limit(1)).first()
        if row is None:
            shown = f"{name} v{version}" if version is not None else name
            raise NotFound(f"no spec {shown!r} is stored (casefile-collector spec list)", what="spec", key=name)
        return _rec(row)
