"""``casefile collect --spec`` for real: the shipped specs against this machine's PostgreSQL,
RabbitMQ and systemd, a signed spec from a file, and every refusal on the command line."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.keys import SigningKey
from agent.specs import sign_spec
from tests.specs.amqp import broker_listening, refused_login

BIN = Path(sys.executable).parent
PG_LOG = Path("/var/log/postgresql")


def casefile(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(BIN / "casefile"), *args],
        env={**os.environ, "COLUMNS": "200"},
        text=True,
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{args} exited {res.returncode}\nstdout:{res.stdout}\nstderr:{res.stderr}")
    return res


def collect(tmp: Path, spec: str, *extra: str) -> tuple[dict[str, Any], Path]:
    """Collect with ``--spec`` (host facts only besides the spec) and unpack the bundle."""
    out = tmp / "out"
    res = casefile(
        "collect", "--spec", spec, "--only", "host", "--home", str(tmp / "home"), "-o", str(out), "--json", *extra
    )
    summary = json.loads(res.stdout)
    unpacked = tmp / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", summary["bundle"]["path"], "-C", str(unpacked)], check=True)
    (top,) = unpacked.iterdir()
    return summary, top


def plugin_facts(top: Path, name: str) -> dict[str, Any]:
    facts = json.loads((top / "facts.json").read_text())
    doc: dict[str, Any] = facts["plugin_facts"][name]
    return doc


def spec_findings(top: Path) -> list[dict[str, Any]]:
    return [f for f in json.loads((top / "findings.json").read_text())["findings"] if f["code"] == "spec"]


needs_pg_log = pytest.mark.skipif(
    not (PG_LOG.is_dir() and os.access(PG_LOG, os.R_OK) and shutil.which("psql")),
    reason="PostgreSQL's log folder is not readable here or psql is missing",
)


@needs_pg_log
def test_postgresql_spec_against_the_real_server(tmp_path: Path) -> None:
    # A real FATAL in the real server log: a connection to a database that does not exist.
    missing = f"casefile_nodb_{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["psql", "-X", "-w", "-h", "127.0.0.1", "-U", "postgres", "-d", missing, "-c", "SELECT 1"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    time.sleep(0.3)
    summary, top = collect(tmp_path, "postgresql")
    assert {"name": "spec_postgresql", "status": "ok"}.items() <= next(
        c for c in summary["collectors"] if c["name"] == "spec_postgresql"
    ).items()
    facts = plugin_facts(top, "spec_postgresql")
    assert facts["spec"]["name"] == "postgresql" and facts["spec"]["signer"] == "builtin"
    assert facts["commands"]["version"]["exit_status"] == 0
    assert "PostgreSQL" in (top / "spec/postgresql/commands/version.txt").read_text()
    assert facts["counts"]["fatal"] >= 1
    # The server log joined the bundle's logs (the timeline reads every logs/*.jsonl).
    rows = [json.loads(line) for line in (top / "logs/spec-postgresql-server.jsonl").read_text().splitlines()]
    ours = [r for r in rows if missing in r["msg"]]
    assert ours and ours[-1]["ts"] and ours[-1]["src"] == "spec-postgresql-server"
    assert any(s["name"] == "spec-postgresql-server" for s in facts["log_sources"])
    # The configuration came along, inside its glob.
    assert any(c["path"].endswith("postgresql.conf") for c in facts["files"][0]["copied"])
    # And the spec's rule is a finding in findings.json and in the report.
    fatal = [f for f in spec_findings(top) if f["title"] == "PostgreSQL FATAL errors"]
    assert fatal and fatal[0]["next_step"].startswith("Group the FATAL lines")
    assert "PostgreSQL FATAL errors" in (top / "report.html").read_text()


@pytest.mark.skipif(
    not (shutil.which("rabbitmqctl") and broker_listening()), reason="RabbitMQ is not installed or not listening here"
)
def test_rabbitmq_spec_against_the_real_broker(tmp_path: Path) -> None:
    user = refused_login()  # a real refused login: the broker logs it, the spec's rule counts it
    time.sleep(0.3)
    _summary, top = collect(tmp_path, "rabbitmq")
    facts = plugin_facts(top, "spec_rabbitmq")
    assert facts["spec"]["version"] == 2
    alarms = facts["commands"]["alarms"]
    if alarms.get("exit_status") != 0:
        pytest.skip(f"the broker does not answer here: {alarms.get('error')}")
    assert facts["commands"]["queues"]["exit_status"] == 0
    assert facts["logs"]["node"]["lines"] > 0
    rows = [json.loads(line) for line in (top / "logs/spec-rabbitmq-node.jsonl").read_text().splitlines()]
    ours = [r for r in rows if user in r["msg"]]
    assert ours and ours[-1]["ts"] and ours[-1]["sev"] == "err"
    assert facts["counts"]["auth-failures"] >= 1 and "resource-alarm" in facts["counts"]
    refused = [f for f in spec_findings(top) if f["title"] == "RabbitMQ refused logins"]
    assert refused and refused[0]["next_step"].startswith("The lines name the user")
    assert "RabbitMQ refused logins" in (top / "report.html").read_text()


def test_systemd_spec_records_what_it_found(tmp_path: Path) -> None:
    _summary, top = collect(tmp_path, "systemd")
    facts = plugin_facts(top, "spec_systemd")
    failed = facts["commands"]["failed-units"]
    if not shutil.which("systemctl"):
        assert failed["error"].startswith("unsupported: systemctl not found")
        return
    # On a machine without systemd as PID 1 (this container) the failure is recorded, and
    # the spec's own rule says so.
    if failed["exit_status"] != 0:
        assert failed["error"]
        assert any(f["title"] == "systemctl did not answer" for f in spec_findings(top))
    else:
        assert (top / "spec/systemd/commands/failed-units.txt").exists()


# -- a signed spec from a file -----------------------------------------------------------

HOSTILE = """
name: local-app
version: 1
description: an application with a token in its config and a symlink out of its folder
parameters:
  dir: {default: /nonexistent, help: the application's folder}
files:
  - {glob: "{dir}/conf/*.conf", max_bytes: 1000}
logs:
  - {name: app, glob: "{dir}/app.log", timestamp: "%Y-%m-%d %H:%M:%S"}
commands:
  - {name: slow, argv: [sleep, "30"], timeout_s: 0.5}
  - {name: echo, argv: [echo, "status ok; token apptok_abcdefgh12345678"], timeout_s: 5}
redact:
  - {name: app-token, pattern: "apptok_[a-z0-9]{16}"}
rules:
  - {id: timeouts, count: "upstream timed out", in: [logs:app], at_least: 2, severity: warning,
     title: Upstream timeouts, next_step: Check the upstream's health}
"""


def _app(tmp: Path) -> Path:
    app = tmp / "app"
    (app / "conf").mkdir(parents=True)
    (app / "conf" / "main.conf").write_text("listen = 8080\napi_key_here = apptok_abcdefgh12345678\n")
    outside = tmp / "secret.txt"
    outside.write_text("the customer's private notes\n")
    (app / "conf" / "evil.conf").symlink_to(outside)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    lines = [
        f"{(now - dt.timedelta(minutes=m)).strftime('%Y-%m-%d %H:%M:%S')} upstream timed out ({m})" for m in (3, 2, 1)
    ]
    (app / "app.log").write_text("\n".join(lines) + "\n")
    return app


def _signed(tmp: Path, key: SigningKey, text: str = HOSTILE, **kw: Any) -> Path:
    path = tmp / "local-app.spec.json"
    path.write_bytes(sign_spec(text, key, valid_for=kw.pop("valid_for", dt.timedelta(days=1)), **kw))
    return path


def _trust(tmp: Path, *keys: SigningKey) -> None:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / "policy.json").write_text(json.dumps({"version": 1, "spec_signers": [k.fingerprint for k in keys]}))


def test_a_signed_spec_file_runs_inside_its_bounds(tmp_path: Path) -> None:
    key = SigningKey.generate()
    app = _app(tmp_path)
    _trust(tmp_path, key)
    spec = _signed(tmp_path, key)
    started = time.monotonic()
    _summary, top = collect(tmp_path, str(spec), "--set", f"spec.dir={app}")
    assert time.monotonic() - started < 30  # the sleep was killed at its bound, not waited for
    facts = plugin_facts(top, "spec_local_app")
    assert facts["spec"]["signer"] == key.fingerprint and facts["spec"]["version"] == 1
    slow = facts["commands"]["slow"]
    assert slow["timed_out"] is True and slow["exit_status"] is None and slow["duration_s"] < 3
    # The symlink out of the glob was refused; the real file was copied with the token redacted.
    files = facts["files"][0]
    assert [c["path"] for c in files["copied"]] == [str(app / "conf" / "main.conf")]
    assert any("evil.conf" in r and "outside" in r for r in files["refused"])
    copied = (top / f"spec/local-app/files{app}/conf/main.conf").read_text()
    assert "apptok_" not in copied and "[REDACTED:app-token]" in copied
    assert "apptok_" not in (top / "spec/local-app/commands/echo.txt").read_text()
    assert dict(facts["redacted"])["app-token"] >= 3  # the file, the output, the argv in the facts
    assert "apptok_" not in json.dumps(facts)
    assert not list(top.rglob("secret.txt")) and "private notes" not in json.dumps(facts)
    # The product log with its own timestamp format: three lines in the window, a finding.
    assert facts["counts"]["timeouts"] == 3
    assert [f["title"] for f in spec_findings(top)] == ["Upstream timeouts"]


@pytest.mark.parametrize("case", ["unsigned", "untrusted-signer", "tampered", "expired"])
def test_refused_spec_files_run_nothing(tmp_path: Path, case: str) -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    _trust(tmp_path, key)
    if case == "unsigned":
        spec = tmp_path / "local-app.yaml"
        spec.write_text(HOSTILE)
    elif case == "untrusted-signer":
        spec = _signed(tmp_path, other)
    elif case == "tampered":
        spec = _signed(tmp_path, key)
        spec.write_text(spec.read_text().replace("sleep", "sleeq"))
    else:
        spec = _signed(tmp_path, key, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    res = casefile(
        "collect", "--spec", str(spec), "--home", str(tmp_path / "home"), "-o", str(tmp_path / "out"), check=False
    )
    assert res.returncode == 2
    said = " ".join(res.stderr.split())
    assert f"spec refused ({case})" in said
    if case == "untrusted-signer":
        assert "add its fingerprint to spec_signers in" in said.replace("│", "").replace("  ", " ")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_preview_lists_what_would_be_read_and_run_and_runs_nothing(tmp_path: Path) -> None:
    key = SigningKey.generate()
    app = _app(tmp_path)
    _trust(tmp_path, key)
    spec = _signed(tmp_path, key)
    res = casefile(
        "collect",
        "--spec",
        str(spec),
        "--set",
        f"spec.dir={app}",
        "--preview",
        "--json",
        "--only",
        "host",
        "--home",
        str(tmp_path / "home"),
        "-o",
        str(tmp_path / "out"),
    )
    shown = json.loads(res.stdout)
    # The rest of the run is previewed as without the spec; nothing of the spec is in it.
    members = [m["path"] for m in shown["members"]]
    assert "facts.json" in members and not [m for m in members if m.startswith(("spec/", "logs/spec-"))]
    doc = shown["spec"]
    assert doc["signer"] == key.fingerprint
    assert doc["plan"]["files"][0]["matches"] == [str(app / "conf" / "main.conf")]
    assert doc["plan"]["commands"][0]["argv"] == ["sleep", "30"]
    assert doc["plan"]["logs"][0]["matches"] == [str(app / "app.log")]
    assert not (tmp_path / "out").exists()
    text = casefile("collect", "--spec", "postgresql", "--preview", "--only", "host", "--home", str(tmp_path / "home"))
    assert "run        psql" in text.stderr and "of the spec, nothing was read or run" in text.stderr
    assert "facts.json" in text.stdout  # the preview of the rest of the run


def test_an_unknown_spec_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    res = casefile("collect", "--spec", "nosuchspec", "--home", str(tmp_path / "home"), check=False)
    assert res.returncode == 2 and "built-in: postgresql, rabbitmq, systemd" in " ".join(res.stderr.split())
