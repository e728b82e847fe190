"""The checked-in generated code must be exactly what the .proto files generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from protos.generate import ROOT, generate

GENERATED = sorted((ROOT / "protos").glob("*_pb2*.py*"))


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")
    generate(tmp_path)
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "protos").glob("*_pb2*.py*")}
    assert sorted(fresh) == [p.name for p in GENERATED], "generated file set differs: run make protos"
    stale = [p.name for p in GENERATED if p.read_bytes() != fresh[p.name]]
    assert not stale, f"out of date: {stale}; run `make protos` and commit"
