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
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.table import Column, Table

from agent.errors import CasefileError, TransportError
from agent.identity_text import display, identity_problem

if TYPE_CHECKING:
    import grpc

from collector.cli_common import (
    CaFileOpt,
    CaFpOpt,
    CollectorOpt,
    DataDirOpt,
    DbUrlOpt,
    InsecureOpt,
    JsonOpt,
    TokenOpt,
    _audit_operator,
    _fmt_ts,
    _fmt_us,
    _query,
    _shown_tree,
    _store,
    app,
    err,
    out,
    parse_duration,
    parse_when,
    shown,
)

token_app = typer.Typer(help="Enrollment, case and engineer tokens (shown once, stored hashed).", no_args_is_help=True)
app.add_typer(token_app, name="token")


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
        typer.Option("--replica-id", help="Name of this replica among those sharing PostgreSQL (default host-pid)."),
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
) -> None:
    """Run the collector until SIGINT/SIGTERM."""
    from collector.listen import ListenError
    from collector.server import CollectorServer, ServerConfig
    from collector.services import IngestLimits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
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
        if server.web_port:
            err.print(f"engineer console on https://{(web_address or '').rpartition(':')[0]}:{server.web_port}/")
        if ready_file:
            tmp = ready_file.with_suffix(".tmp")
            ready = {"address": f"{host}:{port}", "port": port, "fingerprint": fp, "web_port": server.web_port or None}
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


@token_app.command("create")
def token_create(
    kind: Annotated[str, typer.Option("--kind", help="enroll | case | engineer")],
    role: Annotated[str | None, typer.Option("--role", help="viewer | engineer | admin (engineer tokens)")] = None,
    case: Annotated[str | None, typer.Option("--case", help="Case id (case tokens).")] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Lifetime like 24h or 7d; default: enroll 24h, case 14d, engineer 30d.")
    ] = None,
    uses: Annotated[
        int | None, typer.Option("--uses", help="Maximum uses (default: 1 for enroll, unlimited otherwise).")
    ] = None,
    label: Annotated[str, typer.Option("--label", help="Who or what it is for (shown in the audit log).")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the token.")] = False,
    data_dir: DataDirOpt = Path("casefile-data"),
    db_url: DbUrlOpt = None,
) -> None:
    """Create a token. It is printed once; only its hash is stored."""
    defaults = {"enroll": ("24h", 1), "case": ("14d", None), "engineer": ("30d", None)}
    if kind not in defaults:
        raise typer.BadParameter("--kind must be enroll, case or engineer")
    if kind == "engineer" and role is None:
        role = "viewer"
    if kind == "case" and not case:
        raise typer.BadParameter("a case token needs --case ID (the support case it uploads to)")
    # Both are printed to engineers and written to the audit log: plain printable text.
    for option, value in (("--label", label), ("--case", case)):
        if value and (problem := identity_problem(value)) is not None:
            raise typer.BadParameter(f"{option} {problem}")
    store = _store(data_dir, db_url)
    try:
        plain, rec = store.create_token(
            kind,
            role=role,
            case_id=case,
            label=label,
            ttl=parse_duration(ttl or defaults[kind][0]),
            max_uses=uses if uses is not None else defaults[kind][1],
        )
        _audit_operator(
            store,
            "token.create",
            rec.id,
            "ok",
            f"kind {kind}{', role ' + str(rec.role) if rec.role else ''}"
            f"{', case ' + str(rec.case_id) if rec.case_id else ''}, label {label!r}, "
            f"uses {rec.max_uses if rec.max_uses is not None else 'unlimited'}, expires {_fmt_us(rec.expires_at_us)}",
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    finally:
        store.close()
    if quiet:
        print(plain)
        return
    out.print(
        f"token id {rec.id} ({kind}{', role ' + str(rec.role) if rec.role else ''}"
        f"{', case ' + str(rec.case_id) if rec.case_id else ''}), expires {_fmt_us(rec.expires_at_us)}"
    )
    out.print("[bold]Store it now; it is not shown again:[/]")
    print(plain)


@token_app.command("list")
def token_list(data_dir: DataDirOpt = Path("casefile-data"), db_url: DbUrlOpt = None, as_json: JsonOpt = False) -> None:
    """List tokens (ids and metadata; the secrets are not stored)."""
    store = _store(data_dir, db_url, read_only=True)
    try:
        rows = store.list_tokens()
    finally:
        store.close()
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "kind": r.kind,
                        "role": r.role,
                        "case_id": r.case_id,
                        "label": r.label,
                        "uses": r.uses,
                        "max_uses": r.max_uses,
                        "expires_at": _fmt_us(r.expires_at_us),
                        "revoked": r.revoked_at_us is not None,
                    }
                    for r in rows
                ],
                indent=1,
            )
        )
        return
    # The id whole, never cut: it is what `token revoke` takes.
    if db_url:
        from sqlalchemy import make_url

        where = make_url(db_url).render_as_string(hide_password=True)
    else:
        where = str(data_dir.resolve())
    out.print(f"Tokens in {where}", soft_wrap=True, highlight=False, markup=False)
    t = Table(Column("id", no_wrap=True), "kind", "role", "case", "label", "uses", "expires", "revoked")
    for r in rows:
        t.add_row(
            shown(r.id),
            r.kind,
            shown(r.role or ""),
            shown(r.case_id or ""),
            shown(r.label),
            f"{r.uses}/{r.max_uses if r.max_uses is not None else '∞'}",
            _fmt_us(r.expires_at_us),
            "yes" if r.revoked_at_us is not None else "",
        )
    out.print(t)


@token_app.command("revoke")
def token_revoke(token_id: str, data_dir: DataDirOpt = Path("casefile-data"), db_url: DbUrlOpt = None) -> None:
    """Revoke a token by its id."""
    from collector.storage.errors import NotFound

    store = _store(data_dir, db_url, read_only=True)
    try:
        try:
            store.revoke_token(token_id)
        except NotFound as exc:
            _audit_operator(store, "token.revoke", token_id, "not_found", str(exc))
            raise
        _audit_operator(store, "token.revoke", token_id, "ok", "")
    finally:
        store.close()
    out.print(f"revoked {token_id}")


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
    from collector.storage import open_blob_backend

    if case and (problem := identity_problem(case)) is not None:
        raise typer.BadParameter(f"--case {problem}")
    store = _store(data_dir, db_url)
    try:
        results = asyncio.run(import_bundles(store, open_blob_backend(data_dir, blob_url), files, case))
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



@app.command()
def hosts(
    collector: CollectorOpt,
    token: TokenOpt,
    ca_fingerprint: CaFpOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size.")] = 100,
    page_token: Annotated[str, typer.Option("--page-token", help="Cursor from the previous page.")] = "",
) -> None:
    """Hosts that have sent bundles, then agents that have sent none yet (connected now?)."""
    from google.protobuf import json_format

    from protos import collector_pb2

    channel, stub, md = _query(collector, token, ca_fingerprint, ca_file, insecure)
    with channel:
        resp = stub.ListHosts(
            collector_pb2.ListHostsRequest(page_size=limit, page_token=page_token), metadata=md, timeout=30
        )
    if as_json:
        print(json_format.MessageToJson(resp, indent=1))
        return
    t = Table("hostname", "os", "bundles", "last seen", "last bundle", "agents")
    for h in resp.hosts:
        t.add_row(
            shown(h.hostname),
            shown(h.os),
            str(h.bundle_count),
            _fmt_ts(h.last_seen),
            shown(h.last_bundle_id),
            shown(", ".join(h.agent_ids)),
        )
    out.print(t)
    if resp.next_page_token:
        out.print(f"more: --page-token {resp.next_page_token}")
    if resp.agents_without_bundles:
        _print_waiting_agents(resp.agents_without_bundles)


def _print_waiting_agents(agents: Any) -> None:
    """Agents set up (enrolled, or made by a case token) that have sent no bundle yet."""
    t = Table("agent", "hostname", "connected", "last seen", "enrolled", "cases", title="Agents without bundles yet")
    for a in agents:
        t.add_row(
            shown(a.agent_id),
            shown(a.hostname),
            "[green]connected now[/]" if a.connected else "no",
            _fmt_ts(a.last_seen) if a.HasField("last_seen") else "never",
            _fmt_ts(a.enrolled_at),
            shown(", ".join(a.case_ids)) or "—",
        )
    out.print(t)


@app.command()
def bundles(
    collector: CollectorOpt,
    token: TokenOpt,
    ca_fingerprint: CaFpOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
    host: Annotated[str | None, typer.Option("--host", help="Only this hostname.")] = None,
    case: Annotated[str | None, typer.Option("--case", help="Only this case id.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Created at/after: ISO time or a duration ago (2h, 7d).")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Created before: ISO time or a duration ago.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size (max 1000).")] = 50,
    page_token: Annotated[str, typer.Option("--page-token", help="Cursor from the previous page.")] = "",
) -> None:
    """Bundles, newest first, with filters and cursor pagination."""
    from google.protobuf import json_format

    from protos import collector_pb2

    req = collector_pb2.ListBundlesRequest(
        hostname=host or "", case_id=case or "", page_size=limit, page_token=page_token
    )
    if since:
        req.since.FromDatetime(parse_when(since))
    if until:
        req.until.FromDatetime(parse_when(until))
    channel, stub, md = _query(collector, token, ca_fingerprint, ca_file, insecure)
    with channel:
        resp = stub.ListBundles(req, metadata=md, timeout=30)
    if as_json:
        print(json_format.MessageToJson(resp, indent=1))
        return
    # The id whole, never cut by a narrow terminal: it is what show/download/report take.
    t = Table(Column("bundle id", no_wrap=True, min_width=32), "host", "case", "kind", "created", "size", "collectors")
    for b in resp.bundles:
        t.add_row(
            shown(b.bundle_id),
            shown(b.hostname),
            shown(b.case_id),
            shown(b.kind)
            + (" (carried)" if _carried(b) else "")
            + ("\n[red](signer not enrolled)[/]" if b.agent_id == "ag_signer-not-enrolled" else ""),
            _fmt_ts(b.created_at),
            f"{b.size:,}",
            f"{b.collectors_ok} ok"
            + (f", {b.collectors_skipped} skipped" if b.collectors_skipped else "")
            + (f", [red]{b.collectors_failed} failed[/]" if b.collectors_failed else ""),
        )
    out.print(t)
    if resp.next_page_token:
        out.print(f"more: --page-token {resp.next_page_token}")


def _carried(b: Any) -> bool:
    """The bundle was delivered by another key than the one that signed it."""
    return bool(b.origin_fingerprint) and b.origin_fingerprint != b.key_fingerprint


@app.command()
def show(
    bundle_id: Annotated[str, typer.Argument(help="Bundle id (32 hex).")],
    collector: CollectorOpt,
    token: TokenOpt,
    ca_fingerprint: CaFpOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """One bundle's summary and key facts (``--json``: every fact)."""
    from google.protobuf import json_format

    from agent.render import print_summary
    from agent.summary import snapshot_summary
    from protos import collector_pb2

    channel, stub, md = _query(collector, token, ca_fingerprint, ca_file, insecure)
    with channel:
        detail = stub.GetBundle(collector_pb2.GetBundleRequest(bundle_id=bundle_id), metadata=md, timeout=30)
    if as_json:
        print(json_format.MessageToJson(detail, indent=1))
        return
    b = detail.summary
    origin = b.origin_fingerprint or b.key_fingerprint
    out.print(
        f"[bold]bundle {shown(b.bundle_id)}[/] from {shown(b.hostname)}, "
        f"case {shown(b.case_id) or '—'}, {shown(b.kind)}, created {_fmt_ts(b.created_at)}, {b.size:,} bytes, "
        f"signed by key {shown(origin)}"
        + (" [red](signer not enrolled)[/]" if b.agent_id == "ag_signer-not-enrolled" else "")
    )
    if _carried(b):
        out.print(f"carried in by agent {shown(b.agent_id)} (key {shown(b.key_fingerprint)}) with a case token")
    else:
        out.print(f"uploaded by agent {shown(b.agent_id)}")
    print_summary(out, _shown_tree(snapshot_summary(detail.facts)))


@app.command()
def download(
    bundle_id: Annotated[str, typer.Argument(help="Bundle id (32 hex).")],
    collector: CollectorOpt,
    token: TokenOpt,
    ca_fingerprint: CaFpOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File or folder (default: its original name here).")
    ] = None,
) -> None:
    """Download the original bundle file, byte-identical (needs the engineer role)."""
    import hashlib

    from agent.cli_progress import TransferProgress
    from protos import collector_pb2

    channel, stub, md = _query(collector, token, ca_fingerprint, ca_file, insecure)
    with channel:
        stream = stub.DownloadBundle(collector_pb2.GetBundleRequest(bundle_id=bundle_id), metadata=md)
        first = next(stream)
        hdr = first.header
        name = download_name(hdr.file_name, bundle_id)
        dest = output or Path(name)
        if dest.is_dir():
            dest = dest / name
        tmp = dest.with_name(f".{dest.name}.partial")
        h = hashlib.sha256()
        got = 0
        try:
            # 0600, as the agent writes bundles: they hold a customer's data.
            with (
                os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh,
                TransferProgress(err, f"downloading {bundle_id[:12]}…", enabled=err.is_terminal) as bar,
            ):
                for chunk in stream:
                    fh.write(chunk.data)
                    h.update(chunk.data)
                    got += len(chunk.data)
                    bar.update(got, hdr.size)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a cut download leaves nothing half-written behind
            raise
    if h.hexdigest() != hdr.sha256:
        tmp.unlink(missing_ok=True)
        raise CasefileError(f"download of {bundle_id} hashed to {h.hexdigest()}, expected {hdr.sha256}")
    tmp.replace(dest)
    out.print(f"[green]saved[/] {dest} ({hdr.size:,} bytes, sha256 {hdr.sha256})")


def download_name(file_name: str, bundle_id: str) -> str:
    """The file name to save a download under. It comes from the server: only its last
    part, and never empty, ".", "..", hidden or with a NUL (then the bundle id names it)."""
    name = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or name.startswith(".") or "\0" in name:
        return f"{bundle_id}.tar.zst"
    return name


@app.command("findings")
def findings_cmd(
    collector: CollectorOpt,
    token: TokenOpt,
    bundle_id: Annotated[str | None, typer.Argument(help="Bundle id (32 hex); none: across bundles.")] = None,
    ca_fingerprint: CaFpOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
    rule: Annotated[list[str] | None, typer.Option("--rule", help="Finding code (repeatable); across bundles.")] = None,
    severity: Annotated[str, typer.Option("--severity", help="At least: info, warning or critical.")] = "",
    host: Annotated[str, typer.Option("--host", help="Only this host.")] = "",
    case: Annotated[str, typer.Option("--case", help="Only this case.")] = "",
    agent: Annotated[str, typer.Option("--agent", help="Only this agent id.")] = "",
    since: Annotated[str | None, typer.Option("--since", help="Bundles created since (ISO time or 7d).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Bundles created before (ISO time or 2h).")] = None,
    text: Annotated[str, typer.Option("--text", help="Substring of the title or subject.")] = "",
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size.")] = 100,
    page_token: Annotated[str, typer.Option("--page-token", help="Cursor from the previous page.")] = "",
) -> None:
    """A stored bundle's findings (exit 0 none/info, 10 warning, 20 critical); without a
    bundle id, stored findings across bundles, newest first, filtered by the options."""
    from protos import collector_pb2

    if bundle_id is None:
        from collector.cli_fleet import list_findings

        list_findings(
            (collector, token, ca_fingerprint, ca_file, insecure),
            rules=rule or [], severity=severity, host=host, case=case, agent=agent, since=since,
            until=until, text=text, limit=limit, page_token=page_token, as_json=as_json,
        )
        return
    channel, stub, md = _query(collector, token, ca_fingerprint, ca_file, insecure)
    with channel:
        resp = stub.GetFindings(collector_pb2.GetBundleRequest(bundle_id=bundle_id), metadata=md, timeout=120)
    doc = json.loads(resp.json)
    if as_json:
        print(resp.json)
    else:
        t = Table("severity", "finding", "next step", title=f"Findings of {bundle_id}", title_justify="left")
        for f in doc["findings"]:
            t.add_row(shown(f["severity"]), f"{shown(f['title'])}\n[dim]{shown(f['code'])}[/]", shown(f["next_step"]))
        out.print(t if doc["findings"] else "[green]No findings[/]")
    raise typer.Exit(int(doc["exit_code"]))


@app.command("timeline")
def timeline_cmd(
    bundle_id: Annotated[str, typer.Argument(help="Bundle id (32 hex).")],
    collector: CollectorOpt,
    token: TokenOpt,
    ca_fingerprint: CaFpOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
    interval: Annotated[str | None, typer.Option("--interval", help="Bucket size, e.g. 5m (default: auto).")] = None,
) -> None:
    """When did it start: a stored bundle's error/warning timeline and onset."""
    from protos import collector_pb2

    seconds = int(parse_duration(interval).total_seconds()) if interval else 0
    channel, stub, md = _query(collector, token, ca_fingerprint, ca_file, insecure)
    with channel:
        resp = stub.GetTimeline(
            collector_pb2.TimelineRequest(bundle_id=bundle_id, interval_s=seconds), metadata=md, timeout=120
        )
    if as_json:
        print(resp.json)
        return
    doc = json.loads(resp.json)
    out.print(shown(doc["summary"]))
    onset = doc["onset"]
    if onset:
        t = Table("count", "message template", title="Dominant messages of the burst", title_justify="left")
        for g in onset["templates"]:
            t.add_row(str(g["count"]), shown(g["template"]))
        out.print(t)


@app.command("diff")
def diff_cmd(
    a: Annotated[str, typer.Argument(help="Older bundle id.")],
    b: Annotated[str, typer.Argument(help="Newer bundle id.")],
    collector: CollectorOpt,
    token: TokenOpt,
    ca_fingerprint: CaFpOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Compare bundles of different hosts.")] = False,
) -> None:
    """What changed between two stored bundles of the same host."""
    from protos import collector_pb2

    channel, stub, md = _query(collector, token, ca_fingerprint, ca_file, insecure)
    with channel:
        resp = stub.DiffBundles(collector_pb2.DiffRequest(a=a, b=b, force=force), metadata=md, timeout=120)
    if as_json:
        print(resp.json)
    else:
        sys.stdout.write("\n".join(display(line) for line in resp.text.split("\n")))


@app.command("report")
def report_cmd(
    bundle_id: Annotated[str, typer.Argument(help="Bundle id (32 hex).")],
    collector: CollectorOpt,
    token: TokenOpt,
    ca_fingerprint: CaFpOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file (default: <bundle id>.html).")
    ] = None,
) -> None:
    """Render a stored bundle's self-contained HTML report into a file."""
    from protos import collector_pb2

    channel, stub, md = _query(collector, token, ca_fingerprint, ca_file, insecure)
    with channel:
        resp = stub.RenderReport(collector_pb2.GetBundleRequest(bundle_id=bundle_id), metadata=md, timeout=120)
    dest = output or Path(f"{bundle_id}.html")
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.write_bytes(resp.html)
    tmp.replace(dest)
    out.print(f"[green]saved[/] {dest} ({len(resp.html):,} bytes)")


# ------------------------------------------------------------------ live snapshots and audit


@app.command("snapshot")
def snapshot_cmd(
    host: Annotated[str, typer.Argument(help="Hostname or agent id (ag_…) of a connected agent.")],
    collector: CollectorOpt,
    token: TokenOpt,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="facts (default), logs, fragmentation, commands, plugin:NAME (a plugin collector); repeatable.",
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Logs window, e.g. 1h (the agent's policy caps it).")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded on the agent and in the audit log.")] = "",
    wait: Annotated[int, typer.Option("--wait", help="Seconds to queue the request if the agent is offline.")] = 0,
    timeout: Annotated[int, typer.Option("--timeout", help="Seconds to wait for the result once delivered.")] = 60,
    ca_fingerprint: CaFpOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Ask a connected agent for a fresh bundle; show its progress, then its summary and findings.

    Exit 0 when the bundle arrived, 5 when the agent's policy denied the request, 3 when it
    ended otherwise (offline, expired, failed)."""
    from google.protobuf import json_format

    from protos import collector_pb2

    since_s = int(parse_duration(since).total_seconds()) if since else 0
    spec = collector_pb2.SnapshotRequestSpec(
        host=host, scopes=scope or [], since_seconds=since_s, reason=reason, wait_s=wait, timeout_s=timeout
    )
    channel, stub, md = _query(collector, token, ca_fingerprint, ca_file, insecure)
    last = None
    events: list[dict[str, Any]] = []
    with channel:
        for event in stub.RequestSnapshot(spec, metadata=md, timeout=wait + timeout + 30):
            last = event
            if as_json:
                events.append(json_format.MessageToDict(event, preserving_proto_field_name=True))
                continue
            extra = f" bundle {shown(event.bundle_id)}" if event.bundle_id else ""
            when = _fmt_ts(event.at) if event.HasField("at") else ""
            out.print(f"{when:20} {shown(event.state):11} {shown(event.detail)}{extra}", highlight=False)
        doc: dict[str, Any] = {"host": host, "state": last.state if last else "no answer", "events": events}
        if as_json and last is not None and last.state == "done":
            doc["bundle_id"] = last.bundle_id
            found = stub.GetFindings(
                collector_pb2.GetBundleRequest(bundle_id=last.bundle_id), metadata=md, timeout=120
            )
            doc["findings"] = json.loads(found.json)
    if as_json:
        print(json.dumps(doc, indent=1))
    if last is None or last.state != "done":
        message = f"snapshot of {host} ended {doc['state']}: {last.detail if last else ''}".rstrip(": ")
        if last is not None and last.state == "denied":
            raise PolicyDenied(message)
        raise TransportError(message)
    if as_json:
        return
    show(last.bundle_id, collector, token, ca_fingerprint, ca_file, insecure, False)
    # findings' own exit code (10/20 by severity) is for that command; a snapshot that
    # arrived is a success.
    with contextlib.suppress(typer.Exit):
        findings_cmd(
            collector, token, last.bundle_id, ca_fingerprint=ca_fingerprint, ca_file=ca_file, insecure=insecure
        )


@app.command("audit")
def audit_cmd(
    collector: CollectorOpt,
    token: TokenOpt,
    actor: Annotated[
        str | None,
        typer.Option("--actor", help="Token id, its label (alice), operator, or an agent id for channel events."),
    ] = None,
    action: Annotated[
        str | None,
        typer.Option("--action", help="An action or a part of it: live.snapshot, live, snapshot, channel.connect."),
    ] = None,
    outcome: Annotated[str | None, typer.Option("--outcome", help="ok, denied or a status (not_found…).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Newest entries to show.")] = 100,
    ca_fingerprint: CaFpOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The collector's audit log, newest first (needs the admin role)."""
    from google.protobuf import json_format

    from protos import collector_pb2

    req = collector_pb2.ListAuditRequest(actor=actor or "", action=action or "", outcome=outcome or "", limit=limit)
    channel, stub, md = _query(collector, token, ca_fingerprint, ca_file, insecure)
    with channel:
        resp = stub.ListAudit(req, metadata=md, timeout=30)
    if as_json:  # one JSON document, `[]` when nothing matches
        entries = [json_format.MessageToDict(e, preserving_proto_field_name=True) for e in resp.entries]
        print(json.dumps(entries, indent=1, sort_keys=True))
        return
    cols = ("id", "when", "actor", "role", "action", "target", "outcome", "detail")
    t = Table(*cols, title="Audit", title_justify="left")
    for e in resp.entries:
        who = f"{e.actor_label} ({e.actor})" if e.actor_label else e.actor
        fields = (who, e.role, e.action, e.target, e.outcome, e.detail)
        t.add_row(str(e.id), _fmt_ts(e.at), *(shown(f) for f in fields))
    out.print(t)


class PolicyDenied(CasefileError):
    """The agent's own policy refused a live request (exit 5)."""


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


# The fleet commands (query, reanalyze) register themselves on ``app``.
import collector.cli_fleet  # noqa: E402, F401

# Registered last: the hunt commands reuse this module's options and helpers.
from collector.cli_hunt import hunt_app  # noqa: E402

app.add_typer(hunt_app, name="hunt")


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
