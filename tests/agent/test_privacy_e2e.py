"""`casefile collect` with privacy profiles, end to end: real runs, real sealed bundles.

Every check searches the whole decompressed bundle (tar headers, facts.pb, facts.json,
every artifact, MANIFEST.json) for the planted values and this host's harvested ones.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from agent.redact import harvest_host

BIN = Path(sys.executable).parent
CORPUS = Path(__file__).parent.parent / "fixtures" / "privacy"
CORPUS_FILES = sorted(p for p in CORPUS.iterdir() if p.suffix not in (".txt", ".md"))


def casefile(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(BIN / "casefile"), *args],
        env={**os.environ, "COLUMNS": "200"},
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{args} exited {res.returncode}\nstdout:{res.stdout}\nstderr:{res.stderr}")
    return res


def collect(tmp: Path, *args: str, add: bool = True) -> tuple[Path, bytes, dict[str, object]]:
    out = tmp / "out"
    extra = [a for f in CORPUS_FILES for a in ("--add-file", str(f))] if add else []
    res = casefile("collect", "--home", str(tmp / "home"), "-o", str(out), "--json", *extra, *args)
    bundle = Path(json.loads(res.stdout)["bundle"]["path"])
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(bundle.read_bytes())
    manifest = {}
    with tarfile.open(bundle, "r:zst") if sys.version_info >= (3, 14) else _tar(raw) as tar:
        for m in tar.getmembers():
            if m.name.endswith("/MANIFEST.json"):
                fh = tar.extractfile(m)
                assert fh is not None
                manifest = json.loads(fh.read())
    return bundle, raw, manifest


def _tar(raw: bytes) -> tarfile.TarFile:
    import io

    return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")


def text_of(raw: bytes) -> bytes:
    """Every member's name and bytes but ``facts.pb``'s. facts.pb is binary protobuf (packed
    doubles of the time series and the recorded history): a short host name such as "vm"
    turns up in it by chance, between any two non-alphanumeric bytes. Its strings are
    the same as facts.json's, which is searched."""
    with _tar(raw) as tar:
        parts = []
        for m in tar.getmembers():
            parts.append(m.name.encode())
            fh = tar.extractfile(m) if m.isfile() and not m.name.endswith("/facts.pb") else None
            if fh is not None:
                parts.append(fh.read())
    return b"\n".join(parts)


def lines(name: str) -> list[str]:
    return [s for s in (CORPUS / name).read_text().splitlines() if s]


def harvested_patterns() -> list[tuple[str, re.Pattern[bytes]]]:
    h = harvest_host()
    values = [*h.hostnames, *h.fqdns, *h.domains, *h.ips, *h.macs, *h.users]
    return [(v, re.compile(rb"(?i)(?<![A-Za-z0-9.])" + re.escape(v.encode()) + rb"(?![A-Za-z0-9])")) for v in values]


def test_standard_no_secret_survives(tmp_path: Path) -> None:
    bundle, raw, manifest = collect(tmp_path)
    for s in lines("secrets.txt"):
        assert s.encode() not in raw, s
    red = manifest["redaction"]
    assert isinstance(red, dict) and red["profile"] == "standard" and red["leak_gate"]["result"] == "pass"
    assert red["hits"]["files/app.env"]["aws-access-key"] == 1
    assert "10.20.30.40" in raw.decode("utf-8", "replace")  # identifiers stay in standard
    consent = manifest["consent"]
    assert isinstance(consent, dict) and consent["confirmed"] == "not-asked"
    assert re.fullmatch(r"[0-9a-f]{64}", str(consent["preview_digest"]))
    assert {f["member"] for f in consent["added_files"]} == {f"files/{p.name}" for p in CORPUS_FILES}
    casefile("verify", str(bundle))


def test_private_no_secret_and_no_identifier_survives(tmp_path: Path) -> None:
    bundle, raw, manifest = collect(tmp_path, "--profile", "private")
    for s in lines("secrets.txt") + lines("identifiers.txt"):
        assert s.encode() not in raw, s
    text = text_of(raw)
    for value, pattern in harvested_patterns():
        assert pattern.search(text) is None, f"harvested {value!r} survived"
    assert socket.gethostname() not in bundle.name
    red = manifest["redaction"]
    assert isinstance(red, dict) and red["profile"] == "private"
    mapping = tmp_path / "home" / "redact-map.jsonl"
    assert mapping.stat().st_mode & 0o777 == 0o600
    assert mapping.read_bytes() not in raw


def test_consistency_across_artifacts_bundles_and_unmask(tmp_path: Path) -> None:
    files = []
    for name in ("a.log", "b.conf", "c.txt"):
        f = tmp_path / name
        f.write_text(f"{name} talks to 10.77.66.55 today\n")
        files += ["--add-file", str(f)]
    tokens = set()
    for run in range(2):
        _, raw, _ = collect(tmp_path / f"r{run}", "--profile", "private", "--home", str(tmp_path / "home"),
                            "--only", "host", *files, add=False)
        assert b"10.77.66.55" not in raw
        tokens |= set(re.findall(rb"talks to (ip4-private-[0-9a-f]{12})", raw))
    assert len(tokens) == 1
    token = tokens.pop().decode()
    res = casefile("unmask", "--home", str(tmp_path / "home"), f"peer {token} again")
    assert res.stdout.strip() == "peer 10.77.66.55 again"


def test_facts_only_has_no_raw_member_and_refuses_add_file(tmp_path: Path) -> None:
    _, raw, manifest = collect(tmp_path, "--profile", "facts-only", add=False)
    members = [m["path"] for m in manifest["members"]]  # type: ignore[attr-defined,index]
    assert not [m for m in members if m.startswith(("logs/", "commands/"))], members
    facts = json.loads(next(m for m in _tar(raw).getmembers() if m.name.endswith("/facts.json")).name and
                       _tar(raw).extractfile(next(m for m in _tar(raw).getmembers()
                                                  if m.name.endswith("/facts.json"))).read())  # type: ignore[union-attr]
    for src in facts.get("logs", {}).get("sources", []):
        assert not src.get("artifact")
    res = casefile("collect", "--home", str(tmp_path / "home"), "-o", str(tmp_path / "o2"), "--profile",
                   "facts-only", "--add-file", str(CORPUS_FILES[0]), check=False)
    assert res.returncode == 4 and "--add-file is refused under profile 'facts-only'" in res.stderr
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").iterdir())


def test_leak_gate_fails_closed_then_allow_leaks_is_recorded(tmp_path: Path) -> None:
    # The gate re-runs the redactor's rules, so it can only fail on what no rule could
    # redact: here a token straddling the redactor's line bound (a 1 MiB line with no
    # newline, as in a minified file); the gate reads longer lines and sees it whole.
    from agent.redact.pipeline import MAX_LINE

    token = "ghp_" + "Q" * 36
    planted = tmp_path / "bundle.min.js"
    planted.write_text(("x," * (MAX_LINE // 2))[: MAX_LINE - 21] + "," + token + "," + "y," * 100 + "\n")
    out = tmp_path / "out"
    args = ["collect", "--home", str(tmp_path / "home"), "-o", str(out), "--only", "host",
            "--add-file", str(planted)]
    res = casefile(*args, check=False)
    assert res.returncode == 4
    assert "files/bundle.min.js (github-token: 1)" in res.stderr
    assert not out.exists() or not list(out.iterdir())  # nothing sealed, no partial left
    _, _, manifest = collect(tmp_path, "--only", "host", "--add-file", str(planted), "--allow-leaks", add=False)
    red = manifest["redaction"]
    assert isinstance(red, dict) and red["allow_leaks"] is True
    assert red["leak_gate"]["result"] == "leaks-allowed"
    assert red["leak_gate"]["leaks"] == [{"artifact": "files/bundle.min.js", "rule": "github-token", "count": 1}]


def test_dashed_host_address_is_pseudonymised_and_unmasked(tmp_path: Path) -> None:
    h = harvest_host()
    ip4 = next((ip for ip in h.ips if "." in ip), None)
    if ip4 is None:
        pytest.skip("this host has no non-loopback IPv4 address to plant")
    line = f"resolved peer ip-{ip4.replace('.', '-')}.ec2.internal"
    planted = tmp_path / "cloud.log"
    planted.write_text(line + "\n")
    _, raw, manifest = collect(tmp_path, "--profile", "private", "--only", "host", "--add-file", str(planted),
                               add=False)
    red = manifest["redaction"]
    assert isinstance(red, dict) and red["leak_gate"]["result"] == "pass"
    assert ip4.replace(".", "-").encode() not in raw
    masked = re.search(rb"resolved peer ip-(\S+)\.ec2\.internal", raw)
    assert masked is not None
    res = casefile("unmask", "--home", str(tmp_path / "home"), masked.group(0).decode())
    assert res.stdout.strip() == line


SAME_LINES = [
    'login ok token="tok3nV4lue9876543" user=bob',
    'request body {"password":"hunter2hunter2","n":1}',
    'proxy cookie="a=1; sessionid=s3ss10nS3cr3tValue"',
    "auth header Authorization: Bearer abcdefghij0123456789",
    "upload sig=Zq81LmW0cPzT4rYv9xKd9a done",
    "db url postgres://app:PgPa55word@db.internal/x",
]


def test_the_same_line_is_redacted_alike_in_files_and_logs(tmp_path: Path) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    stamps = [(now - dt.timedelta(minutes=len(SAME_LINES) - i)).strftime("%Y-%m-%dT%H:%M:%SZ")
              for i in range(len(SAME_LINES))]
    log = tmp_path / "appsrv.log"
    log.write_text("".join(f"{ts} {msg}\n" for ts, msg in zip(stamps, SAME_LINES, strict=True)))
    bundle, _, manifest = collect(tmp_path, "--only", "logs", "--set", f"log_files={log}", "--add-file", str(log),
                                  add=False)
    from agent.bundle import verify_bundle

    kept = verify_bundle(bundle, keep=("files/appsrv.log", "logs/file-appsrv.jsonl")).kept
    file_lines = kept["files/appsrv.log"].decode().splitlines()
    records = [json.loads(x) for x in kept["logs/file-appsrv.jsonl"].decode().splitlines()]  # every line is JSON
    assert [r["msg"] for r in records] == [x.split(" ", 1)[1] for x in file_lines]
    text = "\n".join(file_lines)
    for secret in ("tok3nV4lue9876543", "hunter2hunter2", "s3ss10nS3cr3tValue", "abcdefghij0123456789",
                   "Zq81LmW0cPzT4rYv9xKd9a", "PgPa55word"):
        assert secret not in text
    red = manifest["redaction"]
    assert isinstance(red, dict)
    assert red["hits"]["files/appsrv.log"] == red["hits"]["logs/file-appsrv.jsonl"]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_preview_writes_nothing_and_connects_nowhere(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        before = _tree(tmp_path)
        res = casefile("collect", "--preview", "--json", "--home", str(home), "-o", str(tmp_path / "out"),
                       "--profile", "private", "--upload", f"127.0.0.1:{port}", "--token", "t",
                       "--add-file", str(CORPUS / "app.env"))
        assert _tree(tmp_path) == before
        with pytest.raises(BlockingIOError):
            server.accept()
    preview = json.loads(res.stdout)
    listed = {m["path"]: m for m in preview["members"]}
    assert {"facts.pb", "facts.json", "files/app.env"} <= set(listed)
    assert listed["files/app.env"]["hits"]["aws-access-key"] == 1
    assert re.fullmatch(r"[0-9a-f]{64}", preview["preview_digest"])


def test_upload_without_terminal_records_non_interactive_consent(tmp_path: Path) -> None:
    # No collector listens on this port: the upload fails, but only after the bundle
    # was sealed with its receipt (what a script with --upload asked for).
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    res = casefile("collect", "--home", str(tmp_path / "home"), "-o", str(tmp_path / "out"), "--only", "host",
                   "--upload", f"127.0.0.1:{port}", "--token", "t", "--insecure", check=False)
    assert res.returncode == 3, res.stderr
    (bundle,) = (tmp_path / "out").iterdir()
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(bundle.read_bytes())
    manifest = json.loads(next(
        _tar(raw).extractfile(m).read()  # type: ignore[union-attr]
        for m in _tar(raw).getmembers() if m.name.endswith("/MANIFEST.json")
    ))
    assert manifest["consent"]["confirmed"] == "non-interactive"
    assert manifest["consent"]["upload_requested"] is True


def test_collector_options_and_budgets_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = casefile(
        "collect", "--home", str(tmp_path / "home"), "-o", str(out), "--json", "--only", "fragmentation",
        "--only", "processes", "--set", "frag_max_files=7", "--set", "processes_top_n=3",
        "--budget", "fragmentation=25",
    )  # fmt: skip
    bundle = Path(json.loads(res.stdout)["bundle"]["path"])
    from agent.bundle import verify_bundle
    from protos import facts_pb2

    snap = facts_pb2.Snapshot()
    snap.ParseFromString(verify_bundle(bundle, keep=("facts.pb",)).kept["facts.pb"])
    sampled = [fs for fs in snap.fragmentation.filesystems if fs.method == "fiemap" and not fs.note.startswith("not")]
    assert sampled and all(fs.max_files == 7 and fs.files_sampled <= 7 for fs in sampled)
    assert len(snap.processes.top_cpu) <= 3 and len(snap.processes.top_rss) <= 3
    for bad, what in [
        (["--set", "no-equals-sign"], "expected KEY=VALUE"),
        (["--budget", "fragmentation=soon"], "not a number of seconds"),
        (["--budget", "nosuch=3"], "unknown collector(s) in budgets: 'nosuch'"),
    ]:
        res = casefile("collect", "--home", str(tmp_path / "home"), "-o", str(out), *bad, check=False)
        assert res.returncode != 0 and what in res.stdout + res.stderr, res.stderr


def test_yaml_secret_and_pgpass_attached_with_add_file_are_redacted(tmp_path: Path) -> None:
    """A kubectl-ordered YAML Secret (data before kind) and a .pgpass with a PgBouncer port,
    attached as a new user would: nothing of them survives and the gate passes."""
    import base64

    user, pw, dbpw = "svc-admin", "Y0urS3cretPassw0rd", "pgb0uncerPa55"
    b64 = [base64.b64encode(v.encode()).decode() for v in (user, pw)]
    secret = tmp_path / "db-secret.yaml"
    secret.write_text(f"apiVersion: v1\ndata:\n  username: {b64[0]}\n  password: {b64[1]}\nkind: Secret\n"
                      "metadata:\n  name: db\ntype: Opaque\n")
    pgpass = tmp_path / ".pgpass"
    pgpass.write_text(f"# PgBouncer\npgbouncer.internal:6432:app:app:{dbpw}\n")
    _, raw, manifest = collect(tmp_path, "--only", "host", "--add-file", str(secret), "--add-file", str(pgpass),
                               add=False)
    text = text_of(raw)
    for value in (*b64, dbpw):
        assert value.encode() not in text
    red = manifest["redaction"]
    assert isinstance(red, dict) and red["leak_gate"]["result"] == "pass"
    assert red["hits"]["files/db-secret.yaml"] == {"k8s-secret": 2}
    assert red["hits"]["files/.pgpass"] == {"pgpass": 1}
