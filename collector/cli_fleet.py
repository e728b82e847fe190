"""Fleet commands of ``casefile-collector``: findings across bundles, the metric query,
and ``reanalyze`` (operator, on the local data folder).

``findings BUNDLE_ID`` keeps showing one bundle's findings; ``findings`` without an id
lists stored findings across bundles, filtered (``--rule``, ``--severity``, ``--host``,
``--case``, ``--agent``, ``--since``, ``--until``, ``--text``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from collector.cli_common import (
    Connection,
    DataDirOpt,
    DbUrlOpt,
    JsonOpt,
    _fmt_ts,
    _store,
    app,
    engineer_command,
    out,
    parse_when,
    shown,
)

__all__ = ["list_findings"]


def list_findings(
    conn: Connection,
    *,
    rules: list[str],
    severity: str,
    host: str,
    case: str,
    agent: str,
    since: str | None,
    until: str | None,
    text: str,
    limit: int,
    page_token: str,
    as_json: bool,
) -> None:
    """Stored findings across bundles, newest first (``findings`` without a bundle id)."""
    from google.protobuf import json_format
    from google.protobuf.timestamp_pb2 import Timestamp

    from protos import collector_pb2

    req = collector_pb2.ListFindingsRequest(
        rules=rules,
        min_severity=severity,
        hostname=host,
        case_id=case,
        agent_id=agent,
        text=text,
        page_size=limit,
        page_token=page_token,
    )
    for name, value in (("since", since), ("until", until)):
        if value:
            ts = Timestamp()
            ts.FromDatetime(parse_when(value))
            getattr(req, name).CopyFrom(ts)
    channel, stub, md = conn.open()
    with channel:
        resp = stub.ListFindings(req, metadata=md, timeout=60)
    if as_json:
        print(json_format.MessageToJson(resp, indent=1))
        return
    t = Table("created", "host", "severity", "finding", "subject", "bundle")
    for f in resp.findings:
        t.add_row(
            _fmt_ts(f.created_at),
            shown(f.hostname),
            shown(f.severity),
            f"{shown(f.title)}\n[dim]{shown(f.rule)}[/]",
            shown(f.subject),
            shown(f.bundle_id),
        )
    out.print(t if resp.findings else "[green]No stored findings match[/]")
    if resp.next_page_token:
        out.print(f"more: --page-token {resp.next_page_token}")


@engineer_command(app, "query")
def query_cmd(
    query: Annotated[str, typer.Argument(help="Filter, e.g. 'fs.fragmented_bytes_pct > 30 since 7d'.")],
    conn: Connection,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many rows.")] = 100,
) -> None:
    """Bundles (or bundle filesystems) whose stored metrics match a filter (README: Fleet questions)."""
    from google.protobuf import json_format

    from protos import collector_pb2

    channel, stub, md = conn.open()
    with channel:
        resp = stub.QueryMetrics(collector_pb2.QueryMetricsRequest(query=query, limit=limit), metadata=md, timeout=60)
    if as_json:
        print(json_format.MessageToJson(resp, indent=1))
        return
    t = Table("created", "host", "mount", "values", "bundle")
    for r in resp.rows:
        values = ", ".join(f"{k}={v:g}" for k, v in sorted(r.values.items()))
        t.add_row(_fmt_ts(r.created_at), shown(r.hostname), shown(r.mountpoint), shown(values), shown(r.bundle_id))
    out.print(t if resp.rows else "[green]No bundle matches[/]")


@app.command("reanalyze")
def reanalyze_cmd(
    data_dir: DataDirOpt = Path("casefile-data"),
    db_url: DbUrlOpt = None,
    blob_url: Annotated[
        str | None, typer.Option("--blob-url", envvar="CASEFILE_BLOB_URL", help="Blob store, as serve uses.")
    ] = None,
    s3_endpoint: Annotated[str | None, typer.Option("--s3-endpoint", help="S3 endpoint URL, as serve uses.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only bundles created since (2026-12-01, 7d).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-run this collector's rules over stored bundles analysed by other rules (resumable)."""
    from collector.analysis import reanalyze
    from collector.storage import open_blob_backend
    from collector.storage.schema import to_micros

    since_us = to_micros(parse_when(since)) if since else None
    store: Any = _store(data_dir, db_url, read_only=True)
    try:
        blobs = open_blob_backend(data_dir, blob_url, s3_endpoint=s3_endpoint)
        result = reanalyze(store, blobs, since_us=since_us)
    finally:
        store.close()
    doc = {"examined": result.examined, "changed": result.changed, "failed": result.failed, "version": result.version}
    if as_json:
        print(json.dumps(doc))
    else:
        out.print(
            f"reanalysed {result.examined} bundles with rules {result.version}: "
            f"{result.changed} changed findings, {result.failed} failed"
        )
    if result.failed:
        raise typer.Exit(4)
