"""facts.json names fields as the .proto does and writes integers as numbers, so a
finding's evidence path works in jq as written; facts.pb and facts.json agree."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from google.protobuf import json_format

from agent.bundle import FORMAT
from agent.bundle.manifest import parse_manifest
from agent.errors import VerificationError
from protos import facts_pb2

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("factsjson")
    res = subprocess.run(
        [str(BIN / "casefile"), "collect", "-o", str(tmp), "--home", str(tmp / "home"), "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    path = json.loads(res.stdout)["bundle"]["path"]
    with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as zr:
        raw = zr.read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _resolve(doc: Any, path: str) -> Any:
    """A fact path as findings write it: a.b[2].c, with [*] and a trailing " (mean)" note."""
    path = path.split(" (", 1)[0]
    for part in path.split("."):
        name, *indexes = re.split(r"\[", part)
        doc = doc[name]
        for index in indexes:
            index = index.rstrip("]")
            doc = doc[0] if index == "*" else doc[int(index)]
    return doc


def test_evidence_paths_resolve_in_facts_json_as_written(bundle: dict[str, bytes]) -> None:
    facts = json.loads(bundle["facts.json"])
    findings = json.loads(bundle["findings.json"])["findings"]
    paths = [e["fact_path"] for f in findings for e in f["evidence"] if e["kind"] == "fact"]
    if not paths:
        pytest.skip("no finding with fact evidence on this machine right now")
    for path in paths:
        _resolve(facts, path)  # a KeyError names the path that does not work


def test_snake_case_names_and_integers_as_numbers(bundle: dict[str, bytes]) -> None:
    facts = json.loads(bundle["facts.json"])
    assert isinstance(facts["memory"]["total"], int) and facts["memory"]["total"] > 0
    assert "network_depth" in facts and "networkDepth" not in facts
    # Fields at their default value are written too: false is there to be read.
    assert "synchronized" in facts["clock"]


def test_facts_json_and_facts_pb_hold_the_same_facts(bundle: dict[str, bytes]) -> None:
    doc = json.loads(bundle["facts.json"])
    from_pb = facts_pb2.Snapshot.FromString(bundle["facts.pb"])
    # A plugin's facts are its JSON document here and its JSON text in facts.pb.
    plugins = doc.pop("plugin_facts", {})
    assert plugins == {name: json.loads(text) for name, text in from_pb.plugin_facts.items()}
    from_pb.ClearField("plugin_facts")
    assert json_format.ParseDict(doc, facts_pb2.Snapshot()) == from_pb


def test_the_reader_takes_this_format_and_the_one_before(bundle: dict[str, bytes]) -> None:
    manifest = json.loads(bundle["MANIFEST.json"])
    assert manifest["format"] == FORMAT == "casefile-bundle/2"
    for readable in ("casefile-bundle/1", "casefile-bundle/2"):
        parse_manifest(json.dumps({**manifest, "format": readable}).encode())
    with pytest.raises(VerificationError, match="unknown format 'casefile-bundle/9'"):
        parse_manifest(json.dumps({**manifest, "format": "casefile-bundle/9"}).encode())
