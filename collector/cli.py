"""``casefile-collector``: run the collector, manage tokens, and query it as an engineer.

Operator commands work on the local data folder: ``serve``, ``token create|list|revoke``,
``import`` (bundles brought by hand), ``tls-fingerprint``, ``reanalyze``. Engineer commands
talk to a running collector over gRPC with an engineer token: ``hosts``, ``bundles``,
``show``, ``download``, ``findings``, ``query``, ``snapshot`` (live), ``hunt``, ``audit``
(admin); they read
``CASEFILE_COLLECTOR``, ``CASEFILE_TOKEN`` and ``CASEFILE_CA_FINGERPRINT`` so a session
needs them once.

Exit codes: 0 success, 2 usage error (``serve``: also an address it cannot listen on),
3 collector unreachable or request refused, 4 any other Casefile error.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from agent.errors import CasefileError, TransportError
from agent.identity_text import identity_problem

if TYPE_CHECKING:
    import grpc

from collector.cli_common import (
    DataDirOpt,
    DbUrlOpt,
    JsonOpt,
    _audit_operator,
    _store,
    app,
    err,
    out,
    shown,
)

__all__ = ["app", "download_name", "main", "rpc_error_message"]


# ------------------------------------------------------------------ operator


@app.command()
def serve(
    address: Annotated[
        str, typer.Option("--address", help="Listen HOST:PORT (port 0 = any free port).")
    ] = "127.0.0.1:7443",
    data_dir: DataDirOpt = Path("casefile-data"),
    db_url: DbUrlOpt = None,
    cert_file: Annotated[
        Path | None, typer.Option("--cert-file", help="TLS certificate PEM (default: self-signed, auto).")
    ] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="TLS private key PEM.")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext gRPC; refused unless the address is loopback.")
    ] = False,
    ready_file: Annotated[
        Path | None, typer.Option("--ready-file", help="Write {address, port, fingerprint} here once serving.")
    ] = None,
    max_bundle_mib: Annotated[int, typer.Option("--max-bundle-mib", help="Largest bundle accepted.")] = 4096,
    replica_id: Annotated[
        str | None,
        typer.Option("--replica-id", help="Name of this replica among those sharing PostgreSQL (default HOST-PORT)."),
    ] = None,
    blob_url: Annotated[
        str | None,
        typer.Option(
            "--blob-url",
            envvar="CASEFILE_BLOB_URL",
            help="s3://bucket/prefix for S3-compatible blob storage (extra s3); default: --data-dir.",
        ),
    ] = None,
    s3_endpoint: Annotated[
        str | None,
        typer.Option("--s3-endpoint", help="S3 endpoint URL (MinIO, Ceph); default: AWS_ENDPOINT_URL, else AWS."),
    ] = None,
    metrics_address: Annotated[
        str | None,
        typer.Option("--metrics-address", help="Serve Prometheus /metrics on HOST:PORT, e.g. 127.0.0.1:9464 (off)."),
    ] = None,
    web_address: Annotated[
        str | None,
        typer.Option("--web-address", help="Serve the engineer console (HTTPS) on HOST:PORT, e.g. 127.0.0.1:8443."),
    ] = None,
    park_after: Annotated[
        int,
        typer.Option(
            "--park-after",
            help="Agents idle this many seconds park on the doorbell (~22 KiB each instead of ~88); 0 = never.",
        ),
    ] = 300,
    doorbell_port: Annotated[
        int | None,
        typer.Option("--doorbell-port", help="Port of the parked agents' doorbell (default: the --address port + 1)."),
    ] = None,
) -> None:
    """Run the collector until SIGINT/SIGTERM."""
    from collector.listen import ListenError, raise_open_files_limit
    from collector.server import CollectorServer, ServerConfig
    from collector.services import IngestLimits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    raise_open_files_limit()
    # Young collections every 10,000 allocations instead of 700: a hunt's uploads keep
    # many objects alive for a few milliseconds, which the default promoted and counted
    # towards full collections, 8 per three hunts over 1,000 agents, each holding the
    # interpreter lock 20-300 ms (what the slowest engineer calls of a hunt waited for);
    # with 10,000 there was one (benchmarks/README.md, hunt rows).
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    config = ServerConfig(
        address=address,
        data_dir=data_dir,
        db_url=db_url,
        insecure=insecure,
        cert_file=cert_file,
        key_file=key_file,
        limits=IngestLimits(max_bundle_bytes=max_bundle_mib * 1024 * 1024),
        replica_id=replica_id,
        blob_url=blob_url,
        s3_endpoint=s3_endpoint,
        metrics_address=metrics_address,
        web_address=web_address,
        park_after_s=park_after,
        doorbell_port=doorbell_port,
        warm_verifier=True,
    )
    try:
        server = CollectorServer(config)
    except (ValueError, TransportError) as exc:  # a bad --address is a usage error
        raise typer.BadParameter(str(exc)) from None

    async def run() -> None:
        try:
            port = await server.start()
        except ListenError as exc:
            # Refused before "serving on" is printed: a second collector on an address in
            # use would otherwise share the port (the kernel splitting connections).
            await asyncio.to_thread(server.store.close)
            _exit(2, str(exc))
        host = address.rpartition(":")[0]
        fp = server.tls.fingerprint if server.tls else None
        err.print(f"casefile-collector serving on {host}:{port} ({'TLS' if fp else 'PLAINTEXT'})")
        if fp:
            err.print(f"certificate fingerprint (agents pin it with --ca-fingerprint): {fp}")
        bell = server.doorbell.port if server.doorbell else None
        if bell:
            err.print(f"doorbell for parked agents on {host}:{bell} (agents idle {park_after} s park there)")
        if server.web_port:
            err.print(f"engineer console on https://{(web_address or '').rpartition(':')[0]}:{server.web_port}/")
        if ready_file:
            tmp = ready_file.with_suffix(".tmp")
            ready = {"address": f"{host}:{port}", "port": port, "fingerprint": fp, "web_port": server.web_port or None,
                     "doorbell_port": bell}
            tmp.write_text(json.dumps(ready))
            tmp.replace(ready_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        err.print("casefile-collector stopping")
        await server.stop()

    asyncio.run(run())


@app.command("migrate")
def migrate_cmd(
    data_dir: DataDirOpt = Path("casefile-data"),
    db_url: DbUrlOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the pending steps; change nothing.")] = False,
) -> None:
    """Bring the metadata database to this version's schema (forward only; safe to repeat)."""
    from sqlalchemy import make_url

    from collector.server import default_db_url
    from collector.storage.base import make_engine
    from collector.storage.migrations import LATEST_VERSION, MIGRATIONS, current_version, migrate

    if db_url is None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = db_url or default_db_url(data_dir)
    where = make_url(url).render_as_string(hide_password=True)
    engine = make_engine(url)

    def say(line: str) -> None:
        out.print(line, highlight=False, soft_wrap=True)

    try:
        with engine.connect() as conn:
            found = current_version(conn)
        pending = [m for m in MIGRATIONS if m.version > found]
        say(f"{where}: schema version {found} → {max(found, LATEST_VERSION)}")
        for m in pending:
            say(f"  {'would apply' if dry_run else 'apply'} {m.version}: {m.description}")
        if not pending:
            say("  up to date" if found <= LATEST_VERSION else "  newer than this collector")
        if dry_run or not pending:
            if found > LATEST_VERSION:
                _exit(4, f"database {where} has schema version {found}; this collector knows {LATEST_VERSION}")
            return
        reached = migrate(engine, where)
        say(f"{where}: now at schema version {reached}")
    finally:
        engine.dispose()


@app.command("tls-fingerprint")
def tls_fingerprint(data_dir: DataDirOpt = Path("casefile-data")) -> None:
    """Print the fingerprint agents pin (making the self-signed certificate if needed)."""
    from collector.tls import ensure_self_signed

    print(ensure_self_signed(data_dir / "tls").fingerprint)

@app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(help="Bundle files (.tar.zst) received by hand.")],
    case: Annotated[str | None, typer.Option("--case", help="File them under this support case.")] = None,
    blob_url: Annotated[
        str | None, typer.Option("--blob-url", envvar="CASEFILE_BLOB_URL", help="As for serve; default: --data-dir.")
    ] = None,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = Path("casefile-data"),
    db_url: DbUrlOpt = None,
) -> None:
    """File bundles received by hand (USB stick, mail) through the checks an upload gets.

    Exit 0 when every file is stored (or was already), 4 when any was refused.
    """
    from collector.services.handcarried import UNENROLLED_LABEL, ImportRefused, import_bundles
    from collector.services.sealed import CollectorRecipient
    from collector.storage import open_blob_backend

    if case and (problem := identity_problem(case)) is not None:
        raise typer.BadParameter(f"--case {problem}")
    store = _store(data_dir, db_url)
    try:
        blobs, keys = open_blob_backend(data_dir, blob_url), CollectorRecipient(data_dir)
        results = asyncio.run(import_bundles(store, blobs, files, case, sealed=keys))
        rows = []
        for r in results:
            if isinstance(r, ImportRefused):
                _audit_operator(store, "bundle.import", "", "invalid_argument", str(r))
                err.print(f"[red]{shown(str(r))}[/]")
                rows.append({"error": str(r)})
                continue
            rec = r.record
            signer = "enrolled" if r.signer_enrolled else UNENROLLED_LABEL
            state = "stored" if r.inserted else "already stored"
            _audit_operator(
                store,
                "bundle.import",
                rec.bundle_id,
                "ok",
                f"{state}, {r.path.name}, key {rec.key_fingerprint}, {signer}",
            )
            rows.append({"bundle_id": rec.bundle_id, "state": state, "agent_id": rec.agent_id, "signer": signer})
            if not as_json:
                warn = "" if r.signer_enrolled else f" [red]({UNENROLLED_LABEL})[/]"
                out.print(
                    f"{shown(str(r.path))}: bundle {rec.bundle_id} {state} (host {shown(rec.hostname)}, "
                    f"agent {rec.agent_id}, key {rec.key_fingerprint}){warn}"
                )
    finally:
        store.close()
    if as_json:
        print(json.dumps(rows, indent=1))
    if any(isinstance(r, ImportRefused) for r in results):
        raise typer.Exit(4)


# ------------------------------------------------------------------ engineer


def _exit(code: int, message: str) -> NoReturn:
    # The message may quote what a server or a stored row said: shown, never raw.
    err.print(f"[red]casefile-collector:[/] {shown(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


# What an engineer reads instead of a gRPC status name: the cause in plain words and the fix.
_PLAIN = {
    "UNAVAILABLE": "cannot reach the collector ({detail}); check --collector / CASEFILE_COLLECTOR",
    "UNAUTHENTICATED": "the collector refused the token ({detail}); check --token / CASEFILE_TOKEN",
    "PERMISSION_DENIED": "the token's role does not allow this ({detail})",
    "NOT_FOUND": "not found: {detail}",
    "DEADLINE_EXCEEDED": "the collector did not answer in time ({detail})",
    "RESOURCE_EXHAUSTED": "the collector is busy or the answer too large ({detail}); try again or ask for less",
}


def rpc_error_message(exc: grpc.RpcError) -> tuple[int, str]:
    """(exit code, one line) for a failed call: 2 for a request the collector found malformed."""
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    detail = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
    if "CERTIFICATE_VERIFY_FAILED" in detail.upper() or "HANDSHAKE" in detail.upper():
        return 3, (
            "the collector's certificate is not trusted: pass --ca-fingerprint sha256:<hex> (what `serve` printed)"
            " or set CASEFILE_CA_FINGERPRINT, or pass --ca-file"
        )
    if code == "INVALID_ARGUMENT":
        return 2, detail
    return 3, _PLAIN.get(code, code + ": {detail}").format(detail=detail)


# The engineer, live, fleet (query, reanalyze), token and hunt commands register themselves
# on ``app`` when imported, in this order, which is the order ``--help`` lists them in.
# isort: off
from collector.cli_engineer import download_name  # noqa: E402
from collector.cli_live import PolicyDenied  # noqa: E402
import collector.cli_fleet  # noqa: E402
import collector.cli_tokens  # noqa: E402, F401
from collector.cli_hunt import hunt_app  # noqa: E402
from collector.cli_sealed import recipient  # noqa: E402, F401  (registers `recipient`)
# isort: on

app.add_typer(hunt_app, name="hunt")
from collector.cli_spec import spec_app  # noqa: E402  # spec keygen|sign|add|list|show

app.add_typer(spec_app, name="spec")
from collector.cli_spec import spec_app  # noqa: E402  # spec keygen|sign|add|list|show

app.add_typer(spec_app, name="spec")


def main() -> None:
    # grpc core's own log lines (a failed TLS handshake) would bury the one line printed
    # here; the server keeps them, and an operator can ask for them with GRPC_VERBOSITY.
    # grpc core reads it once, when it loads: so grpc is imported here, after it is set.
    if sys.argv[1:2] != ["serve"]:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import grpc

    try:
        app()
    except grpc.RpcError as exc:
        _exit(*rpc_error_message(exc))
    except PolicyDenied as exc:
        _exit(5, str(exc))
    except TransportError as exc:
        _exit(3, str(exc))
    except CasefileError as exc:
        _exit(4, str(exc))


if __name__ == "__main__":
    main()
