"""The one place that turns a database URL into an engine, a session and an up-to-date schema.

SQLite gets WAL mode, a busy timeout and ``BEGIN IMMEDIATE`` transactions so that several
processes can submit at once without "database is locked"; PostgreSQL needs nothing special.
The schema is brought to the newest migration on first use, under a lock so that two
processes starting together do not both migrate.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from studio.config import redact
from studio.db import migrate
from studio.errors import DatabaseError
from studio.plumbing import one_line

SQLITE_BUSY_TIMEOUT_S = 60




def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Let SQLAlchemy, not the driver, decide when transactions start (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn) -> None:
    # Take the write lock up front: a deferred transaction that later upgrades to a writer
    # fails at once with "database is locked" in WAL mode instead of waiting for the lock.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _check_sqlite_file(path: Path) -> None:
    """A SQLite database file Studio can use, or a one-line DatabaseError saying why not.

    Its folder must exist (or be made) and be writable (SQLite writes its journal next to it);
    an existing file must not be empty: a 0-byte file is a database that was truncated or
    replaced, and treating it as new would orphan every stored image.
    """
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(f"cannot make the database folder {folder}: {exc.strerror or one_line(exc)}") from None
    if not folder.is_dir():
        raise DatabaseError(f"the database folder {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DatabaseError(f"the database folder {folder} is not writable (read-only home?); SQLite needs to write there")
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        _create_sqlite_file(path)
    if path.exists():
        if path.is_dir():
            raise DatabaseError(f"the database {path} is a folder, not a SQLite file")
        if path.stat().st_size == 0:
            raise DatabaseError(
                f"the database file {path} is empty (0 bytes): it was truncated or replaced, and starting afresh "
                f"would orphan the stored images; restore it from a backup, or move it away to start a new one"
            )
        if not os.access(path, os.R_OK | os.W_OK):
            raise DatabaseError(f"the database file {path} is not readable and writable by this user")


def _create_sqlite_file(path: Path) -> None:
    """Make a new database file non-empty at once, under the lock migrations take.

    SQLite creates an empty file when it connects and writes to it only later, so a second
    process opening a new home in that moment would take the 0-byte file for a truncated
    database. Here the file is created and given its header while holding the migrations' lock;
    a process that finds a 0-byte file waits for that lock and looks again, so only a file still
    empty with nobody creating it is refused.
    """
    import sqlite3

    try:
        with migrate.folder_lock(path.parent):
            if path.exists():
                return  # created meanwhile, or an empty file: the checks that follow judge it
            conn = sqlite3.connect(path)
            try:
                conn.execute("PRAGMA user_version = 0")  # writes the header: the file is a database now
                conn.commit()
            finally:
                conn.close()
    except (OSError, sqlite3.Error) as exc:
        raise DatabaseError(f"cannot create the database {path}: {one_line(exc)}") from None


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"invalid database URL {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _check_sqlite_file(Path(parsed.database))
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise DatabaseError(f"database driver for {redact(url)} is not installed ({exc.name})") from None
    except (ArgumentError, SQLAlchemyError) as exc:
        raise DatabaseError(f"cannot use database {redact(url)}: {exc}") from None


@dataclass
class Database:
    """An engine plus its session factory. Create one per process with :func:`open_database`."""

    url: str
    engine: Engine

    def __post_init__(self) -> None:
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        with self._sessions() as session:
            with session.begin():
                yield session

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(url: str, *, upgrade: bool = True, lock_dir: Path | None = None) -> Database:
    """Connect, check the server is reachable, and (by default) migrate to the newest schema."""
    engine = make_engine(url)
    db = Database(url=url, engine=engine)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if upgrade:
            migrate.ensure_current(db, lock_dir=lock_dir)
    except OperationalError as exc:
        engine.dispose()
        reason = one_line(exc.orig) if exc.orig else one_line(exc)
        if db.is_sqlite:
            raise DatabaseError(f"cannot use the SQLite database {redact(url)}: {reason}") from None
        raise DatabaseError(f"cannot reach database {redact(url)}: {reason}") from None
    except DatabaseError:
        engine.dispose()
        raise
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"cannot use database {redact(url)}: {one_line(getattr(exc, 'orig', None) or exc)}") from None
    return db


def default_lock_dir(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(os.path.abspath(parsed.database)).parent
    return None
