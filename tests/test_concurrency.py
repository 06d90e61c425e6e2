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
    assert engine.run(job.id).status == "succeeded"
"""


def test_concurrent_submitters_on_sqlite(studio_home, engine):
    env = dict(os.environ, STUDIO_HOME=str(studio_home))
    procs = [
        subprocess.Popen([sys.executable, "-c", SUBMITTER, "15"], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert not any("locked" in e for e in errors)
    jobs = engine.list_jobs(limit=100)
    assert len(jobs) == 60 and {j.status for j in jobs} == {"succeeded"}
