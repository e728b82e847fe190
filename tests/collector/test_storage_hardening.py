"""The collector's own files and messages: owner-only, durable before a receipt, no secret echoed;
and what the engineer's CLI saves from it."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from collector.cli import _store, download_name
from collector.storage import Store
from tests.collector.conftest import RunningCollector


def test_database_files_are_owner_only(sqlite_collector: RunningCollector) -> None:
    """casefile.db holds token hashes, agent keys, customer facts and the audit log."""
    sqlite_collector.store.create_token("engineer", role="admin", ttl=dt.timedelta(hours=1))  # -wal written
    files = list(sqlite_collector.data_dir.glob("casefile.db*"))
    assert any(p.name == "casefile.db" for p in files)
    loose = [f"{p.name} {oct(stat.S_IMODE(p.stat().st_mode))}" for p in files if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert not loose, loose


def test_a_database_made_loose_by_someone_else_is_tightened(tmp_path: Path) -> None:
    """A data folder a package made 0755, a database file copied in 0644: both owner-only
    once a collector command opens them (token create may run before serve ever did)."""
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)
    (data / "casefile.db").touch()
    os.chmod(data / "casefile.db", 0o644)
    store = _store(data, None)
    try:
        store.create_token("engineer", role="admin", ttl=dt.timedelta(hours=1))
    finally:
        store.close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "casefile.db").stat().st_mode) == 0o600


def test_a_receipt_follows_a_commit_that_is_on_disk(sqlite_collector: RunningCollector) -> None:
    """synchronous=FULL: the agent deletes its copy on the receipt, so the row behind it must
    survive a power loss or an OS crash, not only a killed process (NORMAL under WAL may not)."""
    with sqlite_collector.store.engine.connect() as conn:
        assert int(conn.execute(text("PRAGMA synchronous")).scalar_one()) == 2  # FULL


def test_a_database_password_is_never_echoed() -> None:
    with pytest.raises(ValueError) as info:
        Store.open("mysql://casefile:S3cretPassw0rd@db.internal/casefile")
    assert "S3cretPassw0rd" not in str(info.value) and "unsupported database URL" in str(info.value)


@given(st.text(max_size=80))
def test_a_downloaded_bundle_is_saved_in_the_folder_asked_for(file_name: str) -> None:
    """The name a collector sends is untrusted: never a path, never hidden, never empty."""
    name = download_name(file_name, "0" * 32)
    assert name and "/" not in name and "\\" not in name and "\0" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert (Path("/srv/out") / name).parent == Path("/srv/out")


def test_download_names() -> None:
    ordinary = "casefile-web1-SR-1-20261129T1Z-ab.tar.zst"
    assert download_name(ordinary, "x") == ordinary
    assert download_name("../../etc/cron.d/evil", "b" * 32) == "evil"
    assert download_name("..\\..\\evil.tar.zst", "b" * 32) == "evil.tar.zst"
    assert download_name("..", "b" * 32) == download_name("", "b" * 32) == "b" * 32 + ".tar.zst"
