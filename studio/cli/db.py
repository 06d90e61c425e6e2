"""``studio db current|upgrade|downgrade``: the schema, for operators (the CLI upgrades by itself)."""

from __future__ import annotations

import click

from studio.cli.common import App, cli, console, pass_app
from studio.errors import UsageError


@cli.group()
def db() -> None:
    """Database schema: the CLI upgrades automatically; these are for operators."""


def migrate_to(app: App, direction: str, revision: str) -> None:
    """Run an Alembic upgrade or downgrade and say where the schema ended up."""
    from alembic.util import CommandError as AlembicError

    from studio.db import migrate
    from studio.db.session import open_database

    database = open_database(app.settings.database_url, upgrade=False)
    try:
        getattr(migrate, direction)(database, revision)
    except AlembicError as exc:
        raise UsageError(f"cannot {direction} to {revision!r}: {exc}") from None
    console.print(f"database at revision {migrate.current_revision(database) or 'base'}")


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_app
def db_upgrade(app: App, revision) -> None:
    """Upgrade the schema (default: to the newest revision)."""
    migrate_to(app, "upgrade", revision)


@db.command("downgrade")
@click.argument("revision")
@pass_app
def db_downgrade(app: App, revision) -> None:
    """Downgrade the schema to REVISION (``base`` drops every table: data is lost)."""
    migrate_to(app, "downgrade", revision)


@db.command("current")
@pass_app
def db_current(app: App) -> None:
    """Print the schema revision of the database and the newest one this version knows."""
    from studio.db import migrate
    from studio.db.session import open_database

    database = open_database(app.settings.database_url, upgrade=False)
    console.print(f"current: {migrate.current_revision(database) or 'empty'}  newest: {migrate.HEAD}")
