"""Gallery fixtures: an engine on SQLite or PostgreSQL, a way to make images, the CLI runner."""

from __future__ import annotations

from dataclasses import replace

import pytest
from click.testing import CliRunner

from studio.cli import add_plugin_commands, cli
from studio.engine import Engine
from studio.gallery.query import Gallery

pytestmark = pytest.mark.usefixtures("testgen_installed")


@pytest.fixture(params=["sqlite", "postgres"])
def any_engine(request, settings):
    """The engine on each supported database (PostgreSQL skips when no server is there)."""
    if request.param == "postgres":
        settings = replace(settings, database_url=request.getfixturevalue("postgres_url"))
    eng = Engine(settings)
    yield eng
    if eng._db is not None:
        eng._db.dispose()


@pytest.fixture
def make(engine):
    return maker(engine)


def maker(engine: Engine):
    """make(prompt, count=1, seed=0, **params): run a testgen job to its end; returns the job."""

    def make(prompt: str, count: int = 1, seed: int = 0, parent_id: str | None = None, **params):
        job = engine.submit(prompt, "testgen", seed=seed, count=count, params={"size": 8, **params}, parent_id=parent_id)
        return engine.run(job.id)

    return make


@pytest.fixture
def view(engine):
    return Gallery(engine.db, engine.settings.home)


@pytest.fixture
def run():
    """Invoke the CLI in-process; returns click's Result (stdout and stderr apart)."""
    add_plugin_commands(cli)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def stored_files(studio_home):
    """stored_files(): the image files under the test's home, relative and sorted."""

    def files(home=studio_home):
        folder = home / "images"
        return sorted(p.relative_to(home).as_posix() for p in folder.rglob("*.png")) if folder.exists() else []

    return files
