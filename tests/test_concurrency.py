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
