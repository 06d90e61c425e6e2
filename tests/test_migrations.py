"""Schema migrations up and down, on SQLite and on the local PostgreSQL server."""

import pytest
from sqlalchemy import inspect

from studio.db import migrate
from studio.db.session import open_database


def tables(db):
    with db.engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def check_up_and_down(url):
    db = open_database(url, upgrade=False)
    try:
        assert migrate.current_revision(db) is None
        assert migrate.ensure_current(db) is True
        assert migrate.current_revision(db) == migrate.HEAD
        assert {"jobs", "images", "alembic_version"} <= tables(db)
        assert migrate.ensure_current(db) is False
        migrate.downgrade(db, "base")
        assert tables(db) & {"jobs", "images"} == set()
        migrate.upgrade(db)
        assert migrate.current_revision(db) == migrate.HEAD
    finally:
        db.dispose()


def test_head_constant_matches_alembic():
    from alembic.script import ScriptDirectory

    db = open_database("sqlite://", upgrade=False)
    assert ScriptDirectory.from_config(migrate.alembic_config(db)).get_current_head() == migrate.HEAD


def test_models_match_the_migrations(tmp_path):
    """Autogenerate finds nothing to add: the ORM and the migration scripts agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from studio.db.models import Base
    from studio.gallery.search import is_search_object

    # The prompt search table/index (migration 0003) is raw SQL outside the ORM.
    opts = {"include_name": lambda name, _type, _parents: not is_search_object(name)}
    db = open_database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)
    assert diff == []


def test_sqlite_up_and_down(tmp_path):
    check_up_and_down(f"sqlite:///{tmp_path / 'studio.db'}")


def test_postgres_up_and_down(postgres_url):
    check_up_and_down(postgres_url)


@pytest.mark.usefixtures("testgen_installed")
def test_engine_runs_on_postgres(postgres_url, settings):
    from dataclasses import replace

    from studio.engine import Engine

    engine = Engine(replace(settings, database_url=postgres_url))
    job = engine.run(engine.submit("on postgres", "testgen", count=3, seed=2**40).id)
    assert job.status == "succeeded"
    images = engine.images(job.id)
    assert [i.seed for i in images] == [2**40, 2**40 + 1, 2**40 + 2]
    queued = engine.submit("x", "testgen")
    assert engine.cancel(queued.id).status == "canceled"
    engine.db.dispose()
