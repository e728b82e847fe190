"""The collector process: a grpc.aio server over a metadata store and a blob store.

Serves Enroll, Ingest, Query and the agents' live Channel, plus standard gRPC health checking and reflection so
ordinary tools (grpcurl, grpc_health_probe) can talk to it. TLS by default with a
self-signed ECDSA certificate made on first start; plaintext only on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent.transport.connect import is_loopback, parse_address
from collector.analysis import AnalysisWorker
from collector.heap_trim import HeapTrimmer, libc_trim
from collector.interceptors import MalformedRequests
from collector.listen import ListenError, why_not_listening
from collector.live import LiveRouter, make_router
from collector.metrics import CollectorMetrics, MetricsEndpoint
from collector.services import EnrollService, IngestLimits, IngestService, QueryService
from collector.services.channel import ChannelService
from collector.services.hunt_service import HuntService
from collector.services.sealed import CollectorRecipient
from collector.storage import BlobStore, BundleRecord, LiveRequestRecord, Store, open_blob_backend
from collector.tls import TlsMaterial, ensure_self_signed, load_tls_files
from protos import collector_pb2, collector_pb2_grpc

if TYPE_CHECKING:
    from collector.doorbell import DoorbellServer
    from collector.web.serve import ConsoleServer

__all__ = ["CollectorServer", "ServerConfig", "default_db_url"]

log = logging.getLogger("casefile.collector")

# Threads for blocking store and file calls (the event loop's default executor).
_IO_THREADS = 32

_SERVICE_NAMES = tuple(
    collector_pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("Enroll", "Ingest", "Query", "Channel")
)


def default_db_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'casefile.db').resolve()}"


@dataclass(frozen=True)
class ServerConfig:
    address: str = "127.0.0.1:7443"
    data_dir: Path = Path("casefile-data")
    db_url: str | None = None  # default: SQLite in data_dir
    insecure: bool = False  # plaintext; loopback only
    cert_file: Path | None = None  # both or neither; default: self-signed in data_dir/tls
    key_file: Path | None = None
    limits: IngestLimits = field(default_factory=IngestLimits)
    grace_s: float = 5.0
    # Start the bundle verifier's worker processes with the server, not on the first
    # upload (which would wait ~1 s for them). `serve` does; in-process servers of the
    # tests start them on first use, as before.
    warm_verifier: bool = False
    # Partial uploads nobody resumed for this long are removed (checked hourly), so an
    # agent that vanished mid-upload cannot fill the staging disk.
    stale_upload_age: dt.timedelta = dt.timedelta(days=7)
    # Replicas sharing PostgreSQL tell each other apart by this (default HOST-PORT, see PgLiveRouter.bound_to).
    replica_id: str | None = None
    # Connections are closed (GOAWAY) after this age ± 10 % so agents that all arrived at
    # one replica spread over the others as they reconnect; streams get the grace to end.
    max_connection_age_s: float = 30 * 60
    max_connection_age_grace_s: float = 30.0
    # Blobs: None = the data dir; "s3://bucket/prefix" = S3-compatible storage (staging
    # stays in data_dir). Endpoint None = AWS_ENDPOINT_URL or AWS itself.
    blob_url: str | None = None
    s3_endpoint: str | None = None
    # HOST:PORT for Prometheus /metrics; None = no metrics endpoint.
    metrics_address: str | None = None
    # HOST:PORT for the engineer console (HTTPS, collector.web); None = no console.
    web_address: str | None = None
    # Parking (collector.doorbell): agents idle this long leave their Channel for a doorbell
    # (~22 KiB here instead of ~88); 0 = never. Needs TLS. The doorbell listens on the gRPC
    # address's host at ``doorbell_port``; None = the gRPC port + 1 (any free port when that is 0).
    park_after_s: int = 300
    doorbell_port: int | None = None


class CollectorServer:
    """Start with :meth:`start`, stop with :meth:`stop`; ``port`` is the bound port."""

    def __init__(self, config: ServerConfig) -> None:
        addr = parse_address(config.address, listen=True)
        if config.insecure and not is_loopback(addr.host):
            raise ValueError(
                f"--insecure is allowed only on a loopback address, not {addr.host}; "
                "use TLS (the default) for anything reachable from another machine"
            )
        if (config.cert_file is None) != (config.key_file is None):
            raise ValueError("give both --cert-file and --key-file, or neither")
        self.config = config
        self.port = 0
        self.tls: TlsMaterial | None = None
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = Store.open(config.db_url or default_db_url(config.data_dir))
        self.blobs: BlobStore = open_blob_backend(config.data_dir, config.blob_url, s3_endpoint=config.s3_endpoint)
        self.metrics = CollectorMetrics()
        self.analysis = AnalysisWorker(self.store, self.blobs)
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.metrics_port = 0
        self.console: ConsoleServer | None = None
        self.web_port = 0
        self._server: grpc.aio.Server | None = None
        self._ingest: IngestService | None = None
        self._channel: ChannelService | None = None
        self.doorbell: DoorbellServer | None = None
        self._health = health.aio.HealthServicer()
        self._janitor: asyncio.Task[None] | None = None
        self.trimmer = HeapTrimmer(libc_trim())  # gives back what a burst of closed Channels freed
        self._trimming: asyncio.Task[None] | None = None
        self.router: LiveRouter = make_router(
            self.store, config.db_url or default_db_url(config.data_dir), config.replica_id
        )
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop serving; set by start()
        self.metrics.track_connected(lambda: len(self.router.connected()), lambda: len(self.router.parked()))

    async def start(self) -> int:
        # Store calls and fsyncs wait on the disk, not the CPU: Python's default of
        # cores + 4 threads (6 here) queued every engineer's query behind the fsyncs of a
        # hunt's uploads (2-9 ms each on a busy disk; benchmarks/bench_hunt.py).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="casefile-io")
        )
        # Why these options: a collector restart makes every agent reconnect at once, and
        # grpc-core cancels calls beyond max_pending_requests (default 1000); keepalive
        # policy accepts the agents' 30 s pings; the receive limit fits one 1 MiB chunk
        # plus its header, far below gRPC's 4 MiB default that bundles never approach.
        # Connection age: behind a TCP load balancer a replica that started first would
        # keep every agent for ever; a maximum age (grpc-core adds ±10 % jitter, and we
        # add our own per process so replicas do not age out in step) sends GOAWAY, the
        # agents reconnect with backoff and land wherever the balancer sends them. The
        # grace lets an upload in flight finish. Server keepalive pings (every 60 s, 20 s
        # to answer) find dead peers (a NAT that forgot the mapping) so their channel rows
        # do not linger, also on a replica the agent does not come back to; on the same
        # replica a Probe finds them at once (services/channel.py). 10,000 agents: ~170
        # pings a second.
        age_ms = int(self.config.max_connection_age_s * 1000 * random.uniform(0.9, 1.1))
        server = grpc.aio.server(
            # Metrics outermost, so a malformed request is counted with the status it got.
            interceptors=[self.metrics.interceptor(), MalformedRequests()],
            options=[
                # gRPC sets SO_REUSEPORT by default: a second collector on this address
                # would start and the kernel would split connections between the two.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", 2 * 1024 * 1024),
                ("grpc.server.max_pending_requests", 20_000),
                ("grpc.server.max_pending_requests_hard_limit", 40_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.max_connection_idle_ms", 15 * 60 * 1000),
                ("grpc.max_connection_age_ms", age_ms),
                ("grpc.max_connection_age_grace_ms", int(self.config.max_connection_age_grace_s * 1000)),
                # A TLS + HTTP/2 handshake not done in 10 s is given up (grpc's default: 120 s).
                # Agents give up on theirs after 20 s; in a reconnect storm the attempts they
                # abandoned otherwise stay open here, holding a descriptor each (the limit
                # was reached at 10,000 agents, benchmarks/README.md).
                ("grpc.server_handshake_timeout_ms", 10_000),
                # Not set: grpc.tsi.max_frame_size 4096 saved ~3 KiB per idle agent (92.0 vs
                # 95.2 KiB per channel at 2,000, benchmarks/README.md) but the frame size is
                # negotiated for both directions, so every upload went in 4 KiB TLS frames.
            ],
        )
        collector_pb2_grpc.add_EnrollServicer_to_server(EnrollService(self.store), server)
        self._ingest = IngestService(
            self.store, self.blobs, self.config.limits, on_stored=self._stored, metrics=self.metrics
        )
        self._ingest.after_receipt = lambda rec: self.analysis.submit(rec.bundle_id)
        self._ingest.sealed = CollectorRecipient(self.config.data_dir)
        collector_pb2_grpc.add_IngestServicer_to_server(self._ingest, server)
        collector_pb2_grpc.add_QueryServicer_to_server(QueryService(self.store, self.blobs, self.router), server)
        collector_pb2_grpc.add_HuntServicer_to_server(HuntService(self.store, self.blobs, self.router), server)
        self._channel = ChannelService(self.store, self.router)
        self._channel.on_closed = self.trimmer.closed
        collector_pb2_grpc.add_ChannelServicer_to_server(self._channel, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((*_SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        listen = parse_address(self.config.address, listen=True)
        target = listen.target
        if not self.config.insecure:
            if self.config.cert_file and self.config.key_file:
                self.tls = load_tls_files(self.config.cert_file, self.config.key_file)
            else:
                self.tls = ensure_self_signed(self.config.data_dir / "tls")
        try:
            if self.tls is None:
                self.port = server.add_insecure_port(target)
            else:
                creds = grpc.ssl_server_credentials([(self.tls.key_pem, self.tls.cert_pem)])
                self.port = server.add_secure_port(target, creds)
        except RuntimeError:  # grpc >= 1.5x raises where older versions returned 0
            self.port = 0
        if self.port == 0 or (listen.port != 0 and self.port != listen.port):
            raise ListenError(self.config.address, why_not_listening(listen.host, listen.port))
        if self.config.metrics_address:
            # Before serving, so a metrics port in use refuses the start as the gRPC one does.
            self._metrics_endpoint = MetricsEndpoint(self.metrics, self.config.metrics_address)
            try:
                self.metrics_port = self._metrics_endpoint.start()
            except OSError:
                self._metrics_endpoint = None
                await server.stop(None)  # releases the gRPC port bound above
                metrics = parse_address(self.config.metrics_address, listen=True)
                reason = why_not_listening(metrics.host, metrics.port, "--metrics-address")
                raise ListenError(f"{self.config.metrics_address} (metrics)", reason) from None
            log.info("metrics on %s (port %d), path /metrics", self.config.metrics_address, self.metrics_port)
        if self.config.web_address:
            await self._start_console(server)
        if self.tls is not None and self.config.park_after_s > 0:
            await self._start_doorbell(server, listen.host)
        await server.start()
        self.loop = asyncio.get_running_loop()
        self.router.bound_to(self.port)
        await self.router.start()
        for name in ("", *_SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        self._janitor = asyncio.create_task(self._sweep_stale_uploads())
        self._trimming = asyncio.create_task(self.trimmer.run())
        self.analysis.start()  # first analyses bundles a previous run stored but never analysed
        if self.config.warm_verifier:
            self._ingest.verifier.warm()
        log.info("collector listening on %s port %d (blobs: %s)", target, self.port, self.blobs.describe())
        return self.port

    def _cert_files(self) -> tuple[Path, Path]:
        """The certificate and key files the console and the doorbell serve: the operator's,
        else the self-signed pair in the data folder (made if missing: the console is HTTPS
        even beside a plaintext gRPC port)."""
        if self.config.cert_file is not None and self.config.key_file is not None:
            return self.config.cert_file, self.config.key_file
        tls_dir = self.config.data_dir / "tls"
        ensure_self_signed(tls_dir)
        return tls_dir / "collector.crt", tls_dir / "collector.key"

    async def _start_console(self, server: grpc.aio.Server) -> None:
        """The engineer console (collector.web) beside the gRPC server, with its certificate."""
        from collector.web.serve import ConsoleServer

        assert self.config.web_address is not None
        self.console = ConsoleServer(
            self.store, self.blobs, self.router, self.config.web_address, self._cert_files(),
            self.config.data_dir / "console-cache",
        )
        try:
            self.web_port = await self.console.start()
        except OSError:
            self.console = None
            await server.stop(None)
            if self._metrics_endpoint is not None:
                await asyncio.to_thread(self._metrics_endpoint.stop)
                self._metrics_endpoint = None
            raise

    async def _start_doorbell(self, server: grpc.aio.Server, host: str) -> None:
        """The parked agents' listener (collector.doorbell), with the gRPC port's certificate."""
        from collector.doorbell import DoorbellServer, server_context

        assert self._channel is not None and self.tls is not None
        want = self.config.doorbell_port
        self.doorbell = self._channel.doorbell(DoorbellServer, server_context(*self._cert_files()))
        try:
            if want is not None:
                port = await self.doorbell.start(host, want)
            else:  # the gRPC port + 1 if free; any port otherwise (agents are told which)
                fixed = parse_address(self.config.address, listen=True).port
                try:
                    port = await self.doorbell.start(host, self.port + 1 if fixed else 0)
                except OSError:
                    log.warning("doorbell: port %d in use, listening on a free port instead", self.port + 1)
                    port = await self.doorbell.start(host, 0)
        except OSError:
            self.doorbell = None
            await server.stop(None)
            reason = why_not_listening(host, want or 0, "--doorbell-port")
            raise ListenError(f"{host}:{want} (doorbell)", reason) from None
        self._channel.parking = (port, int(self.config.park_after_s))
        log.info("doorbell on %s port %d: agents idle %d s park there", host, port, self.config.park_after_s)

    async def _stored(self, bundle: BundleRecord, request_id: str, answered: LiveRequestRecord | None) -> None:
        """Ingest's hook for live answers (``answered``: the request its transaction
        finished): tell the watchers, then time it."""
        await self.router.bundle_stored(bundle, request_id, answered)
        if answered is not None:
            self.metrics.snapshot_latency.observe(max(0.0, (answered.updated_at_us - answered.created_at_us) / 1e6))

    async def _sweep_stale_uploads(self) -> None:
        while True:
            removed = await asyncio.to_thread(self.blobs.stale_uploads, self.config.stale_upload_age, remove=True)
            if removed:
                log.info("removed %d abandoned partial uploads: %s", len(removed), ", ".join(removed))
            await asyncio.sleep(3600)

    async def stop(self, grace: float | None = None) -> None:
        if self._server is None:
            return
        for task in (self._janitor, self._trimming):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._health.enter_graceful_shutdown()
        if self.console is not None:
            await self.console.stop()
            self.console = None
        # Live channels never end by themselves; close them so the grace period is
        # spent on uploads and queries in flight, and agents reconnect at once.
        self.router.close()
        if self.doorbell is not None:
            await self.doorbell.stop()
            self.doorbell = None
        await self._server.stop(self.config.grace_s if grace is None else grace)
        self._server = None
        if self._channel is not None:
            # Their cleanup (the agent's last-seen time, its channel row) needs the store.
            await self._channel.wait_closed(5.0)
        if self._ingest is not None:
            self._ingest.close()
            self._ingest = None
        await asyncio.to_thread(self.analysis.stop)
        await self.router.aclose()
        if self._metrics_endpoint is not None:
            await asyncio.to_thread(self._metrics_endpoint.stop)
            self._metrics_endpoint = None
        await asyncio.to_thread(self.store.close)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
