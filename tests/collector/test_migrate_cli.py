"""``casefile-collector migrate``: dry run, apply, repeat, and a database from the future."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine
from typer.testing import CliRunner

from collector.cli import app
from collector.storage import LATEST_VERSION, Store
from collector.storage.migrations import MIGRATIONS, current_version
from collector.storage.schema import schema_version


def version_of(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return current_version(conn)
    finally:
        engine.dispose()


def test_dry_run_apply_and_repeat(store_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["migrate", "--data-dir", str(tmp_path / "data"), "--db-url", store_url]
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"schema version 0 → {LATEST_VERSION}" in dry.output
    for step in MIGRATIONS:
        assert f"would apply {step.version}: {step.description}" in dry.output
    assert version_of(store_url) == 0  # a dry run changes nothing

    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert f"now at schema version {LATEST_VERSION}" in done.output
    assert version_of(store_url) == LATEST_VERSION
    with Store.open(store_url) as store:  # the collector opens it without further steps
        assert store.schema_version() == LATEST_VERSION

    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "up to date" in again.output


def test_default_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["migrate", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert version_of(f"sqlite:///{tmp_path / 'd' / 'casefile.db'}") == LATEST_VERSION


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    Store.open(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(schema_version.insert().values(version=LATEST_VERSION + 1, applied_at=0, description="future"))
    engine.dispose()
    for extra in ([], ["--dry-run"]):
        result = CliRunner().invoke(app, ["migrate", "--db-url", url, "--data-dir", str(tmp_path), *extra])
        assert result.exit_code == 4, result.output
        assert f"schema version {LATEST_VERSION + 1}" in result.output
