"""Several processes submitting at once to one SQLite file: no "database is locked"."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.usefixtures("testgen_installed")

SUBMITTER = """
import sys
from studio.config import load_settings
from studio.engine import Engine
engine = Engine(load_settings())
for i in range(int(sys.argv[1])):
    job = engine.submit(f"p{i}", "testgen", params={"size": 4})
    final = engine.run(job.id)
    assert final.status == "succeeded", (final.status, final.error)
"""


def test_concurrent_submitters_on_sqlite(studio_home, engine):
    env = dict(os.environ, STUDIO_HOME=str(studio_home))
    procs = [
        subprocess.Popen([sys.executable, "-c", SUBMITTER, "15"], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    failed = [f"submitter {i} exited {p.returncode}:\n{err[-2000:]}" for i, (p, err) in enumerate(zip(procs, errors))
              if p.returncode]
    if failed:  # pytest.fail prints all of it (an assertion's message would be cut short)
        pytest.fail("\n".join(failed))
    assert not any("locked" in e for e in errors)
    jobs = engine.list_jobs(limit=100)
    assert len(jobs) == 60 and {j.status for j in jobs} == {"succeeded"}


def test_a_database_another_process_is_creating_is_waited_for_not_refused(tmp_path):
    """SQLite leaves a new database file empty for a moment; a second process opening the same
    new home then must wait for its creator, not call the file a truncated database."""
    import fcntl
    import sqlite3
    import threading

    from sqlalchemy import inspect

    from studio.db.session import open_database

    path = tmp_path / "studio.db"
    creator = open(tmp_path / ".studio-migrate.lock", "a")
    fcntl.flock(creator, fcntl.LOCK_EX)
    path.write_bytes(b"")  # what the creator's connection has made so far
    result = {}

    def open_it():
        try:
            result["db"] = open_database(f"sqlite:///{path}")
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    opener = threading.Thread(target=open_it)
    opener.start()
    opener.join(0.5)
    assert opener.is_alive() and not result  # waiting for the creator
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 0")
    fcntl.flock(creator, fcntl.LOCK_UN)
    creator.close()
    opener.join(60)
    assert "error" not in result, result.get("error")
    assert "jobs" in inspect(result["db"].engine).get_table_names()
    result["db"].dispose()
