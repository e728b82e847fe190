"""The command lines as users run them: real processes, a real collector on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent


def cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        env={**os.environ, "COLUMNS": "120", **(env or {})},
        text=True,
        capture_output=True,
        timeout=120,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{args} exited {res.returncode}\nstdout:{res.stdout}\nstderr:{res.stderr}")
    return res


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, str]]:
    data = tmp_path / "data"
    env = {"CASEFILE_DATA_DIR": str(data)}
    enroll = cli("casefile-collector", "token", "create", "--kind", "enroll", "-q", env=env).stdout.strip()
    eng = cli(
        "casefile-collector", "token", "create", "--kind", "engineer", "--role", "engineer", "-q", env=env
    ).stdout.strip()
    viewer = cli("casefile-collector", "token", "create", "--kind", "engineer", "-q", env=env).stdout.strip()
    ready = tmp_path / "ready.json"
    log = tmp_path / "collector.log"
    with log.open("w") as log_fh:
        proc = subprocess.Popen(
            [str(BIN / "casefile-collector"), "serve", "--address", "127.0.0.1:0", "--ready-file", str(ready)],
            env={**os.environ, **env},
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), log.read_text()
        info = json.loads(ready.read_text())
        yield {
            "addr": info["address"],
            "fp": info["fingerprint"],
            "enroll": enroll,
            "eng": eng,
            "viewer": viewer,
            "data": str(data),
            "home": str(tmp_path / "home"),
            "tmp": str(tmp_path),
        }
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0


def _facts(bundle: str) -> dict[str, Any]:
    text = subprocess.run(
        ["tar", "--zstd", "-xOf", bundle, "--wildcards", "*/facts.json"], capture_output=True, text=True, check=True
    ).stdout
    return dict(json.loads(text))


def test_enroll_collect_upload_verify_query_download(served: dict[str, str]) -> None:
    s = served
    cli(
        "casefile",
        "agent",
        "enroll",
        "--collector",
        s["addr"],
        "--token",
        s["enroll"],
        "--ca-fingerprint",
        s["fp"],
        "--home",
        s["home"],
    )
    # Enrolled, not uploading: the DNS resolve test asks for the collector's name.
    local = Path(s["tmp"]) / "local"
    alone = json.loads(
        cli("casefile", "collect", "--only", "netdepth", "-o", str(local), "--home", s["home"], "--json").stdout
    )
    resolved = _facts(alone["bundle"]["path"])["network_depth"]["resolve"]
    assert resolved["name"] == s["addr"].rpartition(":")[0] and resolved["ok"], resolved
    # Uploading elsewhere: it asks for the upload target's name (nothing listens there: exit 3,
    # the bundle stays written).
    elsewhere = Path(s["tmp"]) / "elsewhere"
    refused = cli(
        "casefile", "collect", "--only", "netdepth", "-o", str(elsewhere), "--home", s["home"],
        "--upload", "127.0.0.2:9", "--insecure", "--yes", "--json", check=False,
    )  # fmt: skip
    assert refused.returncode == 3, refused.stderr
    (written,) = elsewhere.glob("*.tar.zst")
    assert _facts(str(written))["network_depth"]["resolve"]["name"] == "127.0.0.2"
    # --json still answers with JSON: where the bundle is, and why it was not sent.
    answer = json.loads(refused.stdout)
    assert answer["bundle"]["path"] == str(written) and answer["upload"]["error"], answer

    out = Path(s["tmp"]) / "out"
    res = cli(
        "casefile",
        "collect",
        "--case",
        "SR-1234",
        "--output",
        str(out),
        "--upload",
        s["addr"],
        "--home",
        s["home"],
        "--json",
    )
    summary = json.loads(res.stdout)
    bundle = Path(summary["bundle"]["path"])
    assert bundle.exists() and bundle.parent == out and "-SR-1234-" in bundle.name
    assert {c["name"] for c in summary["collectors"]} >= {"host", "cpu", "memory", "disks", "network"}
    assert all(c["status"] == "ok" for c in summary["collectors"])
    assert summary["upload"]["sha256"] == summary["bundle"]["sha256"]
    uploaded = _facts(str(bundle))
    # The clock offset to the collector and its reachability were measured on the way.
    clock, reach = uploaded["clock"], uploaded["network_depth"]["collector"]
    assert clock["collector_offset_known"] and abs(clock["collector_offset_ms"]) < 2000, clock
    assert reach["ok"] and reach["target"] == s["addr"], reach

    names = subprocess.run(["tar", "--zstd", "-tf", str(bundle)], capture_output=True, text=True, check=True).stdout
    members = {n.split("/", 1)[1] for n in names.split()}
    assert {"facts.pb", "facts.json", "findings.json", "report.html", "MANIFEST.json", "MANIFEST.sig"} <= members

    fp = summary["bundle"]["key_fingerprint"]
    assert "OK" in cli("casefile", "verify", str(bundle), "--fingerprint", fp).stdout
    wrong = cli("casefile", "verify", str(bundle), "--fingerprint", "sha256:" + "0" * 64, check=False)
    assert (wrong.returncode == 1 and "wrong-key" in wrong.stderr) or "key" in wrong.stderr

    env = {"CASEFILE_COLLECTOR": s["addr"], "CASEFILE_TOKEN": s["eng"], "CASEFILE_CA_FINGERPRINT": s["fp"]}
    hosts = json.loads(cli("casefile-collector", "hosts", "--json", env=env).stdout)
    assert hosts["hosts"][0]["bundleCount"] == "1"
    listed = json.loads(
        cli("casefile-collector", "bundles", "--case", "SR-1234", "--since", "1h", "--json", env=env).stdout
    )
    assert [b["bundleId"] for b in listed["bundles"]] == [summary["bundle"]["bundle_id"]]
    narrow = cli("casefile-collector", "bundles", "--case", "SR-1234", env={**env, "COLUMNS": "80"}).stdout
    assert summary["bundle"]["bundle_id"] in narrow  # whole, to paste into show/download
    shown = cli("casefile-collector", "show", summary["bundle"]["bundle_id"], env=env).stdout
    assert "Disks" in shown and "Collectors" in shown
    copy = Path(s["tmp"]) / "copy.tar.zst"
    cli("casefile-collector", "download", summary["bundle"]["bundle_id"], "-o", str(copy), env=env)
    assert copy.stat().st_mode & 0o777 == 0o600  # a customer's data, as the agent writes it
    assert copy.read_bytes() == bundle.read_bytes()

    # A viewer may not download; an unknown token is refused; both exit 3 with one line.
    denied = cli(
        "casefile-collector",
        "download",
        summary["bundle"]["bundle_id"],
        "-o",
        str(copy),
        env={**env, "CASEFILE_TOKEN": s["viewer"]},
        check=False,
    )
    assert denied.returncode == 3 and "the token's role does not allow this" in denied.stderr
    bad = cli("casefile-collector", "hosts", env={**env, "CASEFILE_TOKEN": "cfu_nope"}, check=False)
    assert bad.returncode == 3 and "the collector refused the token" in bad.stderr
    pinned_wrong = cli(
        "casefile-collector", "hosts", env={**env, "CASEFILE_CA_FINGERPRINT": "sha256:" + "1" * 64}, check=False
    )
    assert pinned_wrong.returncode == 3 and "does not match" in pinned_wrong.stderr


def test_case_token_one_shot_upload(served: dict[str, str]) -> None:
    s = served
    env = {"CASEFILE_DATA_DIR": s["data"]}
    case_token = cli(
        "casefile-collector", "token", "create", "--kind", "case", "--case", "SR-5", "-q", env=env
    ).stdout.strip()
    res = cli(
        "casefile",
        "collect",
        "--case",
        "SR-5",
        "--output",
        s["tmp"],
        "--upload",
        s["addr"],
        "--token",
        case_token,
        "--ca-fingerprint",
        s["fp"],
        "--home",
        s["home"],
        "--only",
        "host",
        "--only",
        "memory",
    )
    assert "Uploaded" in res.stdout and "Signed by key sha256:" in res.stdout
    # Without the pin the self-signed certificate is not trusted: one attempt, one line
    # that says what to pass, no retries and no grpc log lines around it.
    (bundle,) = Path(s["tmp"]).glob("casefile-*-SR-5-*.tar.zst")
    unpinned = cli("casefile", "upload", str(bundle), "--to", s["addr"], "--token", case_token,
                   "--home", s["home"], check=False)  # fmt: skip
    assert unpinned.returncode == 3, unpinned.stderr
    assert "--ca-fingerprint" in unpinned.stderr and "gave up after" not in unpinned.stderr
    assert unpinned.stderr.strip().count("\n") == 0, unpinned.stderr


def test_only_takes_comma_separated_names(tmp_path: Path) -> None:
    args = ("--output", str(tmp_path), "--home", str(tmp_path / "home"), "--json")
    done = cli("casefile", "collect", *args, "--only", "host, memory", "--only", "cpu",
               "--set", "cpu_sample_s=0.1", "--set", "frag_budget_s=3")  # fmt: skip
    ran = {c["name"] for c in json.loads(done.stdout)["collectors"] if c["status"] == "ok"}
    assert ran == {"host", "memory", "cpu"}
    # A --set key of a collector that did not run is pointed out; one that is read is not.
    assert "--set frag_budget_s: no collector of this run reads it" in " ".join(done.stderr.split())
    assert "cpu_sample_s" not in done.stderr
    # A misspelt one is a usage error before anything runs, naming the close ones.
    typo = cli("casefile", "collect", *args, "--only", "host", "--set", "frag_budget=3", check=False)
    said = " ".join(typo.stderr.replace("│", " ").split())
    assert typo.returncode == 2 and "is not an option of any collector; did you mean frag_budget_s" in said
    bad = cli("casefile", "collect", *args, "--only", "host,nosuch", check=False)
    assert bad.returncode == 2 and "nosuch" in bad.stderr
    empty = cli("casefile", "collect", *args, "--only", ",", check=False)  # not "everything"
    assert empty.returncode == 2 and "names no collector" in empty.stderr


def test_verify_reports_the_first_problem(tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = json.loads(
        cli("casefile", "collect", "--output", str(tmp_path), "--home", str(home), "--json", "--only", "host").stdout
    )
    bundle = Path(res["bundle"]["path"])
    assert "-adhoc-" in bundle.name
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(bundle.read_bytes()[:-200])
    bad = cli("casefile", "verify", str(cut), check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "verification failed" in bad.stderr
    as_json = cli("casefile", "verify", str(cut), "--json", check=False)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["ok"] is False and report["error"] and report["bundle"] == str(cut)
    missing = cli("casefile", "verify", str(tmp_path / "nope.tar.zst"), check=False)
    assert missing.returncode != 0


def test_serve_refuses_plaintext_off_loopback(tmp_path: Path) -> None:
    res = cli(
        "casefile-collector", "serve", "--address", "0.0.0.0:0", "--insecure", "--data-dir", str(tmp_path), check=False
    )
    assert res.returncode == 2 and "loopback" in res.stderr


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "collector.demo", "--dir", str(tmp_path / "demo"), "--no-keep-console"],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "byte-identical to the customer's bundle: True" in res.stdout
    assert re.search(r"engineer console: https://127\.0\.0\.1:\d+/  \(answers 200;", res.stdout), res.stdout
    assert re.search(r"sign in with this token \(admin, valid 1 h, shown only now\): cfu_\S{43}\n", res.stdout)


def test_declined_upload_leaves_a_command_that_sends_it_later(tmp_path: Path) -> None:
    """At a terminal the customer is asked before anything is sent; saying no prints the
    exact command that sends the bundle later (it parses: it fails only on the network)."""
    import pty
    import select
    import shlex

    env = {**os.environ, "CASEFILE_TOKEN": "cfc_not_a_real_token"}  # a case token, as support hands it out
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [str(BIN / "casefile"), "collect", "--only", "host", "-o", str(tmp_path / "out"),
         "--home", str(tmp_path / "home"), "--upload", "127.0.0.1:9", "--insecure"],
        stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True, env=env,
    )  # fmt: skip
    os.close(secondary)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"Send this bundle" not in seen and time.monotonic() < deadline:
            if select.select([primary], [], [], 0.5)[0]:
                seen += os.read(primary, 65536)
        assert b"Send this bundle" in seen, seen.decode(errors="replace")
        os.write(primary, b"n\n")
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([primary], [], [], 0.5)[0]:
                with contextlib.suppress(OSError):
                    seen += os.read(primary, 65536)
        proc.wait(timeout=10)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    text = seen.decode(errors="replace").replace("\r", "")
    assert "Not sent." in text, text
    later = text.split("send it later with:", 1)[1].strip().splitlines()[0]  # one line, no colour
    assert later.startswith("casefile upload ") and "--to 127.0.0.1:9 --insecure" in later, later
    argv = shlex.split(later)
    assert "cfc_not_a_real_token" not in text  # never printed
    again = cli(str(BIN / argv[0]), *argv[1:], env=env, check=False)
    assert again.returncode == 3, again.stderr  # parsed and verified; only the collector is missing


def test_token_management_is_audited(tmp_path: Path) -> None:
    """`casefile-collector token create|revoke` (there is no RPC for it) is audited with
    actor "operator" and the token id as target, never the token."""
    from typer.testing import CliRunner

    from collector.cli import app
    from collector.storage import Store

    data = tmp_path / "data"
    runner = CliRunner()
    made = runner.invoke(
        app, ["token", "create", "--kind", "engineer", "--role", "admin", "-q", "--data-dir", str(data)]
    )
    assert made.exit_code == 0, made.output
    token = made.output.strip()
    with Store.open(f"sqlite:///{data / 'casefile.db'}") as store:
        token_id = store.list_tokens()[0].id
    revoked = runner.invoke(app, ["token", "revoke", token_id, "--data-dir", str(data)])
    assert revoked.exit_code == 0, revoked.output
    missing = runner.invoke(app, ["token", "revoke", "tok_0000000000", "--data-dir", str(data)])
    assert missing.exit_code != 0
    with Store.open(f"sqlite:///{data / 'casefile.db'}") as store:
        entries = store.list_audit(limit=10)
    got = [(e.action, e.actor, e.target, e.outcome) for e in reversed(entries)]
    assert got == [
        ("token.create", "operator", token_id, "ok"),
        ("token.revoke", "operator", token_id, "ok"),
        ("token.revoke", "operator", "tok_0000000000", "not_found"),
    ]
    assert "role admin" in entries[-1].detail
    assert all(token not in e.detail + e.target + e.actor_label for e in entries)


def test_engineer_commands_print_stored_text_escaped(served: dict[str, str]) -> None:
    """A label with a terminal escape, a C1 CSI, a bidi override and rich markup, stored
    as it was typed: the audit listing shows it escaped and literal, never raw."""
    from collector.storage import Store

    s = served
    env = {"CASEFILE_DATA_DIR": s["data"], "COLUMNS": "400"}
    label = "ops\x1b]0;owned\x07\x9b2J\u202eevil[bold]x[/]"
    refused = cli(
        "casefile-collector", "token", "create", "--kind", "engineer", "--label", label, env=env, check=False
    )
    assert refused.returncode == 2 and "--label has a control or format character U+001B" in refused.stderr
    # A row stored before labels were checked: written through the store directly.
    with Store.open(f"sqlite:///{Path(s['data']) / 'casefile.db'}") as store:
        admin, _ = store.create_token("engineer", role="admin", label=label)
    remote = ("--collector", s["addr"], "--token", admin, "--ca-fingerprint", s["fp"])
    cli("casefile-collector", "hosts", *remote, env=env)  # one audited call under that label
    listed = cli("casefile-collector", "audit", *remote, env=env).stdout
    tokens = cli("casefile-collector", "token", "list", env=env).stdout
    for output in (listed, tokens):
        raw = [c for c in output if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]
        assert raw == [], output
        assert "\\x9b2J\\u202eevil[bold]x[/]" in output, output
