"""A real collector with its console on loopback, real bundles in it, and a plain HTTPS client."""

from __future__ import annotations

import datetime as dt
import http.client
import re
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from agent.keys import SigningKey
from agent.transport import UploadTarget, enroll, upload_bundle
from collector.server import ServerConfig
from protos import facts_pb2
from tests.collector.conftest import RunningCollector, _run_server
from tests.fixtures.analysis.crafted import COLLECTED, GIB, generate_logs, healthy_snapshot, write_bundle

HOSTILE_HOST = 'db-<img src=x onerror="alert(1)">'
HOSTILE_MOUNT = "/mnt/<b>x</b>"
HOSTILE_LOG = '<script>alert("log")</script> disk error'
CASE = "SR-4711"


@dataclass
class Console:
    collector: RunningCollector
    port: int
    tokens: dict[str, str]
    bundles: dict[str, str] = field(default_factory=dict)  # name -> bundle id

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self) -> Http:
        return Http(self.port, self.collector.data_dir / "tls" / "collector.crt")


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: str

    def cookies(self) -> list[str]:
        return self.headers.get_all("set-cookie") or []


class Http:
    """HTTPS with the collector's certificate as the only trust anchor; cookies by hand."""

    def __init__(self, port: int, cafile: Path) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=str(cafile))
        self.jar: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=60)
        hdrs = dict(headers or {})
        if self.jar:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form, doseq=True)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        answer = Answer(resp.status, resp.headers, resp.read().decode("utf-8", "replace"))
        conn.close()
        for cookie in answer.cookies():
            name, _, rest = cookie.partition("=")
            value = rest.split(";")[0]
            if "Max-Age=0" in cookie:
                self.jar.pop(name, None)
            else:
                self.jar[name] = value
        return answer

    def raw_post(self, path: str, body: str) -> Answer:
        """A form body as given (not encoded here): for malformed and oversized forms."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=60)
        conn.request("POST", path, body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        answer = Answer(resp.status, resp.headers, resp.read().decode("utf-8", "replace"))
        conn.close()
        return answer

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str]) -> Answer:
        return self.request("POST", path, form)

    def csrf(self, page: str) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found, page[:2000]
        return found.group(1)

    def sign_in(self, token: str, next_path: str = "/cases") -> Answer:
        form = self.get(f"/signin?next={urllib.parse.quote(next_path)}")
        assert form.status == 200, form.body
        return self.post("/signin", {"csrf": self.csrf(form.body), "token": token, "next": next_path})


def _two_bursts() -> dict[str, list[dict[str, object]]]:
    """A day of logs: a burst that ended ten hours ago (an earlier episode), then one still
    going that began 2 h 05 min before collection (the onset)."""
    merged: dict[str, list[dict[str, object]]] = {}
    earlier = generate_logs(burst_at=COLLECTED - dt.timedelta(hours=10), burst_minutes=20, seed=2, per_minute=0)
    for part in (generate_logs(burst_at=COLLECTED - dt.timedelta(hours=2, minutes=5)), earlier):
        for source, lines in part.items():
            merged.setdefault(source, []).extend(lines)
    for lines in merged.values():
        lines.sort(key=lambda line: str(line["ts"]))
        for n, line in enumerate(lines, 1):
            line["n"] = n
    return merged


def upload_case(channel: grpc.Channel, enroll_token: str, tmp: Path) -> dict[str, str]:
    """Two real bundles of one host in one case (an incident in the logs, then a full
    disk), and one of a host whose name, mount point and log lines are hostile HTML."""
    key = SigningKey.generate()
    ids: dict[str, str] = {}
    with channel as ch:
        agent_id = enroll(ch, token=enroll_token, key=key, hostname="db-1", agent_version="t").agent_id
        before, after = healthy_snapshot(), healthy_snapshot()
        for snap in (before, after):  # a diff compares what both bundles say they collected
            snap.collectors.add(name="disks", state=facts_pb2.CollectorStatus.OK)
        after.disks.partitions[1].percent, after.disks.partitions[1].used = 99.0, 99 * GIB
        after.collected_at.FromDatetime(COLLECTED + dt.timedelta(hours=1))
        hostile = healthy_snapshot(HOSTILE_HOST)
        p = hostile.disks.partitions.add(mountpoint=HOSTILE_MOUNT, device="/dev/sdz1", fstype="ext4",
                                         total=100 * GIB, percent=99.5)
        p.used, p.free = int(99.5 * GIB), int(0.5 * GIB)
        logs = _two_bursts()
        hostile_logs = {"syslog": [{"ts": "2026-11-22T16:00:00Z", "src": "syslog", "sev": "err",
                                    "msg": HOSTILE_LOG, "n": 1}]}
        for name, snap, lg in (("before", before, logs), ("after", after, None), ("hostile", hostile, hostile_logs)):
            snap.agent_id = agent_id
            snap.case_id = CASE
            path = write_bundle(tmp / name, key, snap, lg)
            upload_bundle(ch, path, bundle_id=snap.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
            ids[name] = snap.bundle_id
    return ids


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    config = ServerConfig(address="127.0.0.1:0", data_dir=tmp / "collector", web_address="127.0.0.1:0")
    for running in _run_server(config):
        tokens = {role: running.engineer_token(role) for role in ("viewer", "engineer", "admin")}
        assert running.server.web_port
        con = Console(running, running.server.web_port, tokens)
        con.bundles = upload_case(running.channel(), running.enroll_token(), tmp / "bundles")
        # The collector analyses each bundle after its receipt, in the background: the pages
        # show stored findings, so the tests start once they are stored.
        deadline = time.monotonic() + 120
        while any(running.store.get_analysis(b) is None for b in con.bundles.values()):
            assert time.monotonic() < deadline, "the uploaded bundles were not analysed in 120 s"
            time.sleep(0.1)
        yield con
