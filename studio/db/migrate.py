"""Schema migrations with Alembic, run programmatically so a wheel install can migrate.

``ensure_current`` is on every CLI start, so it first compares the stored revision with
``HEAD`` using one query and only imports Alembic when an upgrade is really needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from alembic.config import Config

    from studio.db.session import Database

#: The newest revision in migrations/versions; a test keeps it equal to Alembic's head.
HEAD = "0003"
_PG_LOCK_KEY = 0x5757_D10  # arbitrary constant shared by every studio process


def alembic_config(db: "Database") -> "Config":
    from alembic.config import Config

    script_dir = resources.files("studio.migrations")
    cfg = Config()
    cfg.set_main_option("script_location", str(script_dir))
    cfg.attributes["engine"] = db.engine
    return cfg


def current_revision(db: "Database") -> str | None:
    with db.engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextlib.contextmanager
def _migration_lock(db: "Database", lock_dir: Path | None) -> Iterator[None]:
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
        return
    if lock_dir is None:
        url = make_url(db.url)
        if url.database and url.database != ":memory:":
            lock_dir = Path(os.path.abspath(url.database)).parent
    if lock_dir is None:
        yield
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(lock_dir):
        yield


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """The lock of the SQLite database in ``folder``: held while the file is created or migrated."""
    with open(folder / ".studio-migrate.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(db: "Database", revision: str = "head", lock_dir: Path | None = None) -> None:
    from alembic import command

    with _migration_lock(db, lock_dir):
        command.upgrade(alembic_config(db), revision)


def downgrade(db: "Database", revision: str, lock_dir: Path | None = None) -> None:
    from alembic import command

    with _migration_lock(db, lock_dir):
        command.downgrade(alembic_config(db), revision)


def known_revisions() -> set[str]:
    """The revisions this version of Studio ships (from Alembic's scripts)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("studio.migrations")))
    return {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}


def ensure_current(db: "Database", lock_dir: Path | None = None) -> bool:
    """Upgrade to HEAD if needed; returns True when a migration ran.

    A database stamped with a revision this Studio does not know was migrated by a newer Studio:
    refused with both revisions named, never "upgraded" or touched.
    """
    current = current_revision(db)
    if current == HEAD:
        return False
    if current is not None and current not in known_revisions():
        from studio.config import redact
        from studio.errors import DatabaseError

        raise DatabaseError(
            f"the database {redact(db.url)} is at schema revision {current!r}, newer than this Studio knows "
            f"(newest here: {HEAD!r}); it was upgraded by a newer Studio: upgrade Studio "
            f"(pip install -U studio), or point STUDIO_DATABASE_URL at another database"
        )
    upgrade(db, "head", lock_dir)
    return True
