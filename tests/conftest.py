"""Shared fixtures: a metadata store on SQLite and on PostgreSQL.

``store_url`` runs each test twice: once on a fresh SQLite file, once on a
fresh PostgreSQL database (``casefile_test_<random>``, dropped afterwards).
PostgreSQL comes from ``CASEFILE_TEST_POSTGRES_URL``; when it does not answer,
those cases are skipped, or fail if ``CASEFILE_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from collector.storage import Store

# Why: the property tests share two cores with collectors, agent processes and PostgreSQL
# that other tests start; how fast examples are generated or run is not what they check
# (speed is measured in benchmarks/), so a loaded machine must not fail them.
settings.register_profile("casefile", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("casefile")

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

_reachability: dict[str, str | None] = {}


def _admin_url() -> URL:
    return make_url(os.environ.get("CASEFILE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))


def _postgres_problem(url: URL) -> str | None:
    """Why PostgreSQL at ``url`` cannot be used, or None; asked once per session."""
    key = url.render_as_string(hide_password=False)
    if key not in _reachability:
        engine = create_engine(url, connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            _reachability[key] = None
        except SQLAlchemyError as exc:
            reason = getattr(exc, "orig", None) or exc
            _reachability[key] = (str(reason).strip().splitlines() or ["no answer"])[0]
        finally:
            engine.dispose()
    return _reachability[key]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    admin = _admin_url()
    problem = _postgres_problem(admin)
    if problem is not None:
        where = admin.render_as_string(hide_password=True)
        if os.environ.get("CASEFILE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL not reachable at {where}: {problem}")
        pytest.skip(
            f"PostgreSQL not reachable at {where}: {problem}; set CASEFILE_TEST_POSTGRES_URL"
        )
    name = f"casefile_test_{secrets.token_hex(6)}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield admin.set(database=name).render_as_string(hide_password=False)
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty metadata database: SQLite file or fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'casefile.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An opened, migrated ``Store`` on ``store_url``; closed after the test."""
    opened = Store.open(store_url)
    try:
        yield opened
    finally:
        opened.close()
