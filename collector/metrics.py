"""Prometheus metrics for one collector process, served on their own HTTP port.

Off unless ``--metrics-address`` is given; then ``GET /metrics`` on that address (keep it
on loopback or a management network: it names no secret, but it is unauthenticated).

Every server gets its own registry, so several collectors in one process (tests, the
demo) never share or collide on counters.

| metric | type | from |
|---|---|---|
| ``casefile_connected_agents`` | gauge | the live router's open Channel streams, read at scrape time |
| ``casefile_parked_agents`` | gauge | agents parked on this process's doorbell (online, no stream), at scrape time |
| ``casefile_uploads_in_flight`` | gauge | Ingest.Upload streams past their header |
| ``casefile_ingested_bytes_total`` | counter | bundle bytes received by Upload (resumed bytes count once) |
| ``casefile_ingested_bundles_total`` | counter | bundles newly stored (not idempotent repeats) |
| ``casefile_verification_failures_total{reason}`` | counter | uploads refused after receipt, by reason (1) |
| ``casefile_snapshot_latency_seconds`` | histogram | live request created → done (bundle stored) |
| ``casefile_grpc_requests_total{method,code}`` | counter | every RPC's outcome, by a server interceptor |

(1) ``VerificationError.reason`` (``hash-mismatch``, ``bad-signature``, …) or one of
``sha256-mismatch`` (bytes differ from the header) and ``manifest-mismatch``.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from agent.transport.connect import parse_address
from collector.interceptors import observe, rebuild

__all__ = ["CollectorMetrics", "MetricsEndpoint", "RequestMetricsInterceptor"]

# Live snapshot goals are p50 ≤ 0.5 s and p99 ≤ 1 s (DESIGN §10): resolution around them.
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class CollectorMetrics:
    """The collector's metrics; cheap enough to update on every chunk and RPC."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connected_agents = Gauge(
            "casefile_connected_agents", "Agents holding a live Channel stream to this process", registry=r
        )
        self.parked_agents = Gauge(
            "casefile_parked_agents", "Agents parked on this process's doorbell instead of a stream", registry=r
        )
        self.uploads_in_flight = Gauge("casefile_uploads_in_flight", "Bundle uploads being received", registry=r)
        self.ingested_bytes = Counter("casefile_ingested_bytes", "Bundle bytes received by Ingest.Upload", registry=r)
        self.ingested_bundles = Counter("casefile_ingested_bundles", "Bundles verified and newly stored", registry=r)
        self.verification_failures = Counter(
            "casefile_verification_failures",
            "Uploads refused after their bytes arrived, by reason",
            ["reason"],
            registry=r,
        )
        self.snapshot_latency = Histogram(
            "casefile_snapshot_latency_seconds",
            "Live snapshot requests: created until the answering bundle is stored",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "casefile_grpc_requests", "RPCs served, by method and status code", ["method", "code"], registry=r
        )

    def track_connected(self, count: Callable[[], int], parked: Callable[[], int] | None = None) -> None:
        """Read the connected-agent count from ``count`` (and the parked one) at every scrape."""
        self.connected_agents.set_function(lambda: float(count()))
        if parked is not None:
            self.parked_agents.set_function(lambda: float(parked()))

    def verification_failed(self, reason: str) -> None:
        self.verification_failures.labels(reason=reason or "unknown").inc()

    def interceptor(self) -> RequestMetricsInterceptor:
        return RequestMetricsInterceptor(self.requests)


def _code_of(context: grpc.aio.ServicerContext[Any, Any], default: grpc.StatusCode) -> str:
    try:
        code = context.code()
    except Exception:  # older grpc: not available on every context
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate.name
    return default.name


class RequestMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by full method name and the status code it ended with."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        # Method → (the handler given, the one returned): built once per method, not per call;
        # each idle agent's stream would otherwise keep its own copy (~0.5 KiB).
        self._built: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = str(handler_call_details.method)
        built = self._built.get(method)
        if built is not None and built[0] is handler:
            return built[1]
        counter = self._counter

        def record(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> None:
            if exc is None:
                default = grpc.StatusCode.OK
            elif isinstance(exc, grpc.aio.AbortError):
                default = grpc.StatusCode.UNKNOWN
            elif isinstance(exc, BaseException) and type(exc).__name__ == "CancelledError":
                default = grpc.StatusCode.CANCELLED
            else:
                default = grpc.StatusCode.UNKNOWN
            counter.labels(method=method, code=_code_of(context, default)).inc()

        # Any shape: grpc_health's Watch, for one, is a coroutine writing with context.write.
        wrapped = rebuild(handler, lambda behavior, kind: observe(behavior, kind, record))
        self._built[method] = (handler, wrapped)
        return wrapped


class MetricsEndpoint:
    """``/metrics`` over HTTP on ``address`` (HOST:PORT, port 0 = any free port)."""

    def __init__(self, metrics: CollectorMetrics, address: str) -> None:
        self._metrics = metrics
        self._address = address
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> int:
        addr = parse_address(self._address, listen=True)
        self._server, self._thread = start_http_server(addr.port, addr=addr.host, registry=self._metrics.registry)
        self.port = int(self._server.server_port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

