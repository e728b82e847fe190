"""A real collector facing callers that send what they should not: health Watch, bytes
that are no protobuf message, and identity text with control characters."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import func, select

from agent.keys import SigningKey
from agent.transport.proof import make_proof
from collector.interceptors import LOG_EVERY_S
from collector.storage.schema import agents
from protos import collector_pb2, collector_pb2_grpc
from tests.collector.conftest import RunningCollector

# Every method the collector serves, with whether the client streams its requests.
_OWN = [
    (f"/{svc.full_name}/{m.name}", m.client_streaming)
    for name in ("Enroll", "Ingest", "Query", "Channel")
    for svc in (collector_pb2.DESCRIPTOR.services_by_name[name],)
    for m in svc.methods
]
METHODS = [
    *_OWN,
    ("/grpc.health.v1.Health/Check", False),
    ("/grpc.health.v1.Health/Watch", False),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True),
]
# A varint that never ends: no message type decodes it.
GARBAGE = b"\xff" * 12


def _server_problems(records: list[logging.LogRecord]) -> list[str]:
    """Log records that are tracebacks or errors: what must not appear for bad input."""
    return [
        f"{r.name} {r.levelname}: {r.getMessage()}"
        for r in records
        if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()
    ]


def _status(c: RunningCollector, method: str, streamed: bool) -> grpc.StatusCode:
    with c.channel() as ch:
        try:
            if streamed:
                call = ch.stream_stream(method)  # identity serializers: raw bytes go out as they are
                for _ in call(iter([GARBAGE, GARBAGE]), timeout=20):
                    pass
            elif method.endswith(("/DownloadBundle", "/Watch")):
                for _ in ch.unary_stream(method)(GARBAGE, timeout=20):
                    pass
            else:
                ch.unary_unary(method)(GARBAGE, timeout=20)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_every_method_refuses_garbage_with_invalid_argument_and_one_log_line(
    sqlite_collector: RunningCollector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    codes = {method: _status(sqlite_collector, method, streamed) for method, streamed in METHODS}
    codes.update({f"{m} (again)": _status(sqlite_collector, m, s) for m, s in METHODS})
    elapsed = time.monotonic() - started
    assert codes == dict.fromkeys(codes, grpc.StatusCode.INVALID_ARGUMENT)
    assert _server_problems(caplog.records) == []
    lines = [r for r in caplog.records if "malformed request" in r.getMessage()]
    # One line, then at most one per LOG_EVERY_S however many calls: a flood stays small.
    assert 1 <= len(lines) <= 2 + elapsed / LOG_EVERY_S, [r.getMessage() for r in lines]
    assert all(r.levelno == logging.WARNING and "\n" not in r.getMessage() for r in lines)
    # Still serving, and every refusal was counted under its status.
    with sqlite_collector.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    counted = sqlite_collector.server.metrics.requests.labels(
        method="/casefile.v1.Ingest/Upload", code="INVALID_ARGUMENT"
    )._value.get()
    assert counted == 2


def test_health_watch_through_the_metrics_wrapper(
    sqlite_collector: RunningCollector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with sqlite_collector.channel() as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "casefile.v1.Ingest"):
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=20)
            first = next(watch)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
        unknown = next(stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=20))
        assert unknown.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    assert _server_problems(caplog.records) == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# ------------------------------------------------------------------ identity text

BAD_HOSTNAMES = [
    pytest.param("web-1\x1b[2J\x1b[1;1Hall clear", id="ESC"),
    pytest.param("web\x00-1", id="NUL"),
    pytest.param("web-1\x9b31m", id="C1-CSI"),
    pytest.param("invoice\u202egnp.exe", id="bidi-override"),
    pytest.param("web\u2066-1", id="bidi-isolate"),
    pytest.param("web-1\n2024-01-01 fake log line", id="newline"),
    pytest.param("w" * 256, id="too-long"),
    pytest.param("", id="empty"),
    pytest.param("   ", id="spaces"),
]


def _agent_rows(c: RunningCollector) -> int:
    with c.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(agents)).scalar_one())


@pytest.mark.parametrize("hostname", BAD_HOSTNAMES)
def test_enroll_refuses_bad_hostname_and_spends_nothing(collector: RunningCollector, hostname: str) -> None:
    token = collector.enroll_token(uses=1)
    key = SigningKey.generate()
    with collector.channel() as ch:
        stub = collector_pb2_grpc.EnrollStub(ch)
        request = collector_pb2.EnrollRequest(token=token, public_key=key.public.raw, agent_version="t")
        with pytest.raises(grpc.RpcError) as refused:
            stub.Enroll(collector_pb2.EnrollRequest(hostname=hostname, **_fields(request)), timeout=20)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "hostname" in str(refused.value.details())
        # The message names the problem without carrying the raw control characters.
        assert not any(ch in str(refused.value.details()) for ch in "\x1b\x00\x9b\u202e\u2066\n")
        assert _agent_rows(collector) == 0
        (rec,) = [t for t in collector.store.list_tokens() if t.kind == "enroll"]
        assert rec.uses == 0
        # The single-use token still works for a proper name.
        ok = stub.Enroll(collector_pb2.EnrollRequest(hostname="web-1", **_fields(request)), timeout=20)
    assert collector.store.get_agent(ok.agent_id).hostname == "web-1"


def _fields(request: collector_pb2.EnrollRequest) -> dict[str, object]:
    return {"token": request.token, "public_key": request.public_key, "agent_version": request.agent_version}


@pytest.mark.parametrize("hostname", [p for p in BAD_HOSTNAMES if p.id not in ("empty", "spaces")])
def test_case_token_proof_with_bad_hostname_makes_no_identity(collector: RunningCollector, hostname: str) -> None:
    case_token, _ = collector.store.create_token("case", case_id="CASE-1", label="t", max_uses=1)
    key = SigningKey.generate()
    data = secrets.token_bytes(100)
    sha = hashlib.sha256(data).hexdigest()
    bundle_id = secrets.token_hex(16)
    proof = make_proof(key, agent_id="", bundle_id=bundle_id, sha256=sha, size=len(data))
    proof.hostname = hostname
    with collector.channel() as ch:
        stub = collector_pb2_grpc.IngestStub(ch)
        request = collector_pb2.UploadStateRequest(bundle_id=bundle_id, size=len(data), sha256=sha, proof=proof)
        md = (("authorization", f"Bearer {case_token}"),)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetUploadState(request, metadata=md, timeout=20)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert "proof hostname" in str(refused.value.details())
        assert _agent_rows(collector) == 0
        request.proof.hostname = "laptop-7"
        stub.GetUploadState(request, metadata=md, timeout=20)
    assert _agent_rows(collector) == 1
