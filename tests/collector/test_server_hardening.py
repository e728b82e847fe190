"""A real collector facing callers that send what they should not: health Watch, bytes
that are no protobuf message, and identity text with control characters."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import func, select

from agent.keys import SigningKey
from agent.transport.proof import make_proof
from collector.interceptors import LOG_EVERY_S, MalformedRequests
from collector.metrics import CollectorMetrics
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


def test_interceptors_keep_every_handler_shape() -> None:
    """The shapes grpc.aio drives: a plain function and a generator (on threads), a
    coroutine (writing with context.write or returning), an async generator; each
    answers through both interceptors and is counted with its status."""
    metrics = CollectorMetrics()
    decode = collector_pb2.EnrollRequest.FromString

    def plain(request: Any, context: Any) -> bytes:
        return b"plain:" + request.hostname.encode()

    def generator(request: Any, context: Any) -> Iterator[bytes]:
        yield b"g1"
        yield b"g2"

    async def writer(request: Any, context: Any) -> None:
        await context.write(b"w1")
        await context.write(b"w2")

    async def joined(requests: AsyncIterator[Any], context: Any) -> bytes:
        return b",".join([r.hostname.encode() async for r in requests])

    async def echoed(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r.hostname.encode()

    handlers = {
        "Plain": grpc.unary_unary_rpc_method_handler(plain, decode),
        "Generator": grpc.unary_stream_rpc_method_handler(generator, decode),
        "Writer": grpc.unary_stream_rpc_method_handler(writer, decode),
        "Joined": grpc.stream_unary_rpc_method_handler(joined, decode),
        "Echoed": grpc.stream_stream_rpc_method_handler(echoed, decode),
    }
    msg = [collector_pb2.EnrollRequest(hostname=h).SerializeToString() for h in ("a", "b")]

    async def run() -> dict[str, Any]:
        server = grpc.aio.server(
            migration_thread_pool=ThreadPoolExecutor(2), interceptors=[metrics.interceptor(), MalformedRequests()]
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Shapes", handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        got: dict[str, Any] = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                got["Plain"] = await ch.unary_unary("/test.Shapes/Plain")(msg[0], timeout=10)
                got["Generator"] = [m async for m in ch.unary_stream("/test.Shapes/Generator")(msg[0], timeout=10)]
                got["Writer"] = [m async for m in ch.unary_stream("/test.Shapes/Writer")(msg[0], timeout=10)]
                got["Joined"] = await ch.stream_unary("/test.Shapes/Joined")(iter(msg), timeout=10)
                got["Echoed"] = [m async for m in ch.stream_stream("/test.Shapes/Echoed")(iter(msg), timeout=10)]
                for name, call in (
                    ("Writer", ch.unary_stream("/test.Shapes/Writer")(GARBAGE, timeout=10)),
                    ("Echoed", ch.stream_stream("/test.Shapes/Echoed")(iter([msg[0], GARBAGE]), timeout=10)),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        [m async for m in call]
                    got[f"{name} garbage"] = refused.value.code()
        finally:
            await server.stop(0)
        return got

    assert asyncio.run(run()) == {
        "Plain": b"plain:a",
        "Generator": [b"g1", b"g2"],
        "Writer": [b"w1", b"w2"],
        "Joined": b"a,b",
        "Echoed": [b"a", b"b"],
        "Writer garbage": grpc.StatusCode.INVALID_ARGUMENT,
        "Echoed garbage": grpc.StatusCode.INVALID_ARGUMENT,
    }
    counted = {
        (s.labels["method"].rpartition("/")[2], s.labels["code"]): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "casefile_grpc_requests_total"
    }
    assert counted == {
        **{(name, "OK"): 1.0 for name in handlers},
        ("Writer", "INVALID_ARGUMENT"): 1.0,
        ("Echoed", "INVALID_ARGUMENT"): 1.0,
    }
