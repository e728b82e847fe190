"""``make demo``: the whole spine on this machine, narrated as the commands people type.

Starts a collector on loopback (SQLite + local blobs, TLS with a self-signed
certificate), issues an enrollment and an engineer token, enrolls an agent, runs a
one-shot collection and uploads it, verifies the bundle, queries it as an engineer,
downloads it back byte-identical, and stops the collector. Exit 0 only if every step
worked. Everything lives in a fresh folder (``--dir``, default ``./demo-data``).

The collector also serves the engineer console (``--web-address``): the demo prints its
address and a sign-in token made for it (an admin token, one hour, shown this once) and,
at a terminal, keeps the collector running until Enter is pressed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def _cmd(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else name


SECRETS: dict[str, str] = {}  # token -> how to show it: the demo never prints a secret


def run(args: list[str], *, env: dict[str, str], capture: bool = False) -> str:
    shown = " ".join(shlex.quote(SECRETS.get(a, a)) for a in args)
    print(f"\n\033[1m$ {shown}\033[0m", flush=True)
    argv = [_cmd(args[0]), *args[1:]]
    if capture:
        res = subprocess.run(argv, env=env, check=True, text=True, capture_output=True)
        return res.stdout
    subprocess.run(argv, env=env, check=True)
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the Casefile demo end to end.")
    parser.add_argument("--dir", type=Path, default=Path("demo-data"))
    parser.add_argument(
        "--keep-console",
        action=argparse.BooleanOptionalAction,
        default=sys.stdin.isatty(),
        help="keep the collector (and its console) running until Enter (default: at a terminal)",
    )
    opts = parser.parse_args()
    root: Path = opts.dir.resolve()
    if root.exists():
        shutil.rmtree(root)
    data, home, out = root / "collector", root / "agent-home", root / "bundles"
    env = {**os.environ, "CASEFILE_DATA_DIR": str(data), "COLUMNS": "100"}

    print("== Operator: tokens for one agent and one engineer (shown once, stored hashed)")
    enroll_token = run(
        ["casefile-collector", "token", "create", "--kind", "enroll", "--label", "demo agent", "-q"],
        env=env,
        capture=True,
    ).strip()
    eng_token = run(
        [
            "casefile-collector",
            "token",
            "create",
            "--kind",
            "engineer",
            "--role",
            "engineer",
            "--label",
            "demo engineer",
            "-q",
        ],
        env=env,
        capture=True,
    ).strip()
    console_token = run(
        ["casefile-collector", "token", "create", "--kind", "engineer", "--role", "admin", "--ttl", "1h",
         "--label", "demo console", "-q"],
        env=env,
        capture=True,
    ).strip()
    SECRETS.update({enroll_token: "$ENROLL_TOKEN", eng_token: "$ENGINEER_TOKEN", console_token: "$CONSOLE_TOKEN"})
    print("(tokens captured as $ENROLL_TOKEN and $ENGINEER_TOKEN; a token is shown once and stored hashed)")

    print("\n== Operator: start the collector (TLS, self-signed certificate)")
    ready = root / "ready.json"
    log = (root / "collector.log").open("w")
    server = subprocess.Popen(
        [_cmd("casefile-collector"), "serve", "--address", "127.0.0.1:0", "--web-address", "127.0.0.1:0",
         "--ready-file", str(ready)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    print(
        f"$ casefile-collector serve --address 127.0.0.1:0 --web-address 127.0.0.1:0 --ready-file {ready}"
        f"   (pid {server.pid})"
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                print((root / "collector.log").read_text(), file=sys.stderr)
                raise SystemExit("collector did not start")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        addr, fp = info["address"], info["fingerprint"]
        print(f"collector at {addr}, certificate {fp}")

        print("\n== Customer's admin: enroll this machine's agent (pins the certificate)")
        run(
            [
                "casefile",
                "agent",
                "enroll",
                "--collector",
                addr,
                "--token",
                enroll_token,
                "--ca-fingerprint",
                fp,
                "--home",
                str(home),
            ],
            env={**env, "CASEFILE_ENROLL_TOKEN": ""},
        )

        print("\n== Customer: one-shot collection for case DEMO-1, uploaded")
        summary = json.loads(
            run(
                [
                    "casefile",
                    "collect",
                    "--case",
                    "DEMO-1",
                    "--output",
                    str(out),
                    "--upload",
                    addr,
                    "--home",
                    str(home),
                    "--json",
                ],
                env=env,
                capture=True,
            )
        )
        bundle = Path(summary["bundle"]["path"])
        print(
            f"bundle {bundle.name}: {summary['bundle']['size']:,} bytes, "
            f"collected in {summary['bundle']['collect_seconds']} s, uploaded at {summary['upload']['received_at']}"
        )
        for c in summary["collectors"]:
            print(f"  collector {c['name']:<10} {c['status']:<8} {c['duration_ms']:>8} ms {c.get('error', '')}")

        print("\n== Anyone: verify the bundle against the agent's key")
        key_fp = summary["bundle"]["key_fingerprint"]
        run(["casefile", "verify", str(bundle), "--fingerprint", key_fp], env=env)

        print("\n== Engineer: query the collector")
        qenv = {**env, "CASEFILE_COLLECTOR": addr, "CASEFILE_TOKEN": eng_token, "CASEFILE_CA_FINGERPRINT": fp}
        run(["casefile-collector", "hosts"], env=qenv)
        run(["casefile-collector", "bundles", "--case", "DEMO-1"], env=qenv)
        bundle_id = summary["bundle"]["bundle_id"]
        run(["casefile-collector", "show", bundle_id], env=qenv)
        copy = root / "downloaded.tar.zst"
        run(["casefile-collector", "download", bundle_id, "--output", str(copy)], env=qenv)
        same = hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(bundle.read_bytes()).digest()
        print(f"\ndownloaded copy is byte-identical to the customer's bundle: {same}")
        if not same:
            return 1
        _console(data, info["web_port"], console_token, keep=opts.keep_console)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    print(f"\ncollector stopped (exit {server.returncode}); everything is in {root}")
    return 0 if server.returncode == 0 else 1


def _console(data: Path, port: int, token: str, *, keep: bool) -> None:
    """Print the console's address and its sign-in token; check it answers over HTTPS."""
    url = f"https://127.0.0.1:{port}/"
    ctx = ssl.create_default_context(cafile=str(data / "tls" / "collector.crt"))
    with urllib.request.urlopen(url + "signin", context=ctx, timeout=10) as resp:
        status = resp.status
    print("\n== Engineer: the console (HTTPS, the collector's certificate)")
    print(f"engineer console: {url}  (answers {status}; the certificate is {data / 'tls' / 'collector.crt'})")
    print(f"sign in with this token (admin, valid 1 h, shown only now): {token}")
    if keep:
        try:
            input("the collector keeps serving; press Enter to stop it ")
        except (EOFError, KeyboardInterrupt):
            print()


if __name__ == "__main__":
    raise SystemExit(main())
