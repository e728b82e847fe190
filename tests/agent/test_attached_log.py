"""A file attached with --add-file that reads as a log joins the timeline, redacted."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from agent.analysis import BundleView, build_timeline
from agent.collect import CollectionSpec
from agent.keys import SigningKey
from agent.oneshot import PrivacyOptions, collect_bundle

SECRET = "AKIAIOSFODNN7EXAMPLE"


def _app_log(path: Path, now: dt.datetime) -> dt.datetime:
    """Six hours of a quiet app log, then errors every 20 s for the last 40 minutes."""
    onset = (now - dt.timedelta(minutes=40)).replace(microsecond=0)
    lines = []
    t = now - dt.timedelta(hours=6)
    while t < now:
        stamp = t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        if t >= onset:
            lines.append(f"{stamp} ERROR [worker-3] upload failed: key={SECRET} bucket unreachable (timeout)")
        elif t.second < 20 and t.minute % 5 == 0:
            lines.append(f"{stamp} INFO [worker-1] heartbeat ok")
        t += dt.timedelta(seconds=20)
    path.write_text("\n".join(lines) + "\n")
    return onset


def test_an_attached_log_is_analysed_and_stays_redacted(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    log = tmp_path / "app.log"
    onset = _app_log(log, now)
    conf = tmp_path / "app.conf"
    conf.write_text("listen = 8080\nworkers = 4\n")
    (tmp_path / "app.log.1").write_text(f"{now:%Y-%m-%dT%H:%M:%S}Z ERROR a rotation that was not attached\n")
    collected = collect_bundle(
        key=SigningKey.generate(),
        output_dir=tmp_path / "out",
        spec=CollectionSpec(only=("host",)),
        privacy=PrivacyOptions(home=tmp_path / "home", add_files=(log, conf)),
    )
    manifest = collected.bundle.manifest
    added = {e["member"]: e["log"] for e in manifest.extra["consent"]["added_files"]}
    assert added == {"files/app.log": "logs/file-app.jsonl", "files/app.conf": ""}
    view = BundleView.from_file(collected.bundle.path)
    paths = {m.path for m in manifest.members}
    assert {"files/app.log", "files/app.conf", "logs/file-app.jsonl"} <= paths
    records = list(view.iter_logs())
    assert records and all(SECRET not in r.msg for r in records)  # redacted like any log
    assert not any("not attached" in r.msg for r in records)  # only the file given, not its rotations
    tl = build_timeline(view)
    assert tl.sources == {"file-app": len(records)}
    assert tl.onset is not None and abs(tl.onset.began_at - onset.timestamp()) < 60
    source = next(s for s in view.snapshot.logs.sources if s.name == "file-app")
    assert source.artifact == "logs/file-app.jsonl" and source.lines == len(records)
    assert json.dumps(manifest.document()).count(SECRET) == 0
