"""Shared fixtures: an isolated studio home per test, real databases, the test plugin.

Tests that need PostgreSQL or Redis skip with a reason when the server is absent; with
STUDIO_REQUIRE_SERVICES=1 (set by .ci/run) such a skip becomes a failure.
"""

from __future__ import annotations

import importlib.metadata
import os
import uuid

import pytest

from studio.config import load_settings
from studio.engine import Engine

POSTGRES_ADMIN_URL = os.environ.get("STUDIO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("STUDIO_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def require_service(reason: str) -> None:
    if os.environ.get("STUDIO_REQUIRE_SERVICES", "") not in ("", "0"):
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def studio_home(tmp_path, monkeypatch):
    """Every test gets its own home and SQLite database; no test sees the user's."""
    home = tmp_path / "home"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    for name in ("STUDIO_DATABASE_URL", "STUDIO_BROKER_URL", "STUDIO_LOAD_PLUGINS", "STUDIO_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def settings(studio_home):
    return load_settings()


@pytest.fixture
def engine(settings):
    eng = Engine(settings)
    yield eng
    if eng._db is not None:
        eng._db.dispose()


@pytest.fixture(scope="session")
def testgen_installed():
    names = {ep.name for ep in importlib.metadata.entry_points(group="studio")}
    if "testgen" not in names:
        pytest.fail("the test plugin is not on the path: run pytest from the repository (the root conftest.py installs it for the run)")


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL database, dropped after the test."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require_service("psycopg is not installed")
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"studio_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        require_service(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {str(exc).splitlines()[0]}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()
