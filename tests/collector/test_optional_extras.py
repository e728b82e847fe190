"""The collector on its embedded defaults (SQLite, local blobs) needs neither optional extra.

`make demo` installs the project without `[postgres]` or `[s3]`: psycopg and boto3 must be
imported only when a PostgreSQL URL or an S3 blob store is configured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# Run in a child interpreter where importing psycopg or boto3 fails, as on an install
# without the extras; then the real command line does the operator's first steps.
BLOCKED = "import sys\nfor name in ('psycopg', 'boto3'):\n    sys.modules[name] = None\n"


def _collector(args: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    code = BLOCKED + "from collector.cli import main\nsys.argv = ['casefile-collector', *sys.argv[1:]]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


def test_token_and_serve_work_without_the_postgres_and_s3_extras(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = _collector(["token", "create", "--kind", "enroll", "--data-dir", str(data), "-q"])
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip()
    ready = tmp_path / "ready.json"
    code = BLOCKED + "from collector.cli import main\nsys.argv = ['casefile-collector', *sys.argv[1:]]\nmain()\n"
    serve = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--address", "127.0.0.1:0", "--data-dir", str(data),
         "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and serve.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), serve.stderr.read() if serve.poll() is not None else "no ready file in 30 s"
        assert json.loads(ready.read_text())["address"].startswith("127.0.0.1:")
    finally:
        serve.terminate()
        serve.communicate(timeout=30)
