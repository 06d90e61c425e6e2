"""Many jobs from concurrent submitters on two workers: every one runs exactly once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from studio.db.models import Image, Job
from tests.distributed.conftest import wait_for

SUBMITTERS = 4
JOBS_EACH = 55


def test_220_jobs_from_4_submitters_on_2_workers(cluster, engine):
    cluster.start_worker()
    cluster.start_worker("--batch", "4")
    script = Path(__file__).with_name("submitter.py")
    procs = [
        subprocess.Popen([sys.executable, str(script), f"submitter {k}", str(JOBS_EACH)], env=cluster.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(SUBMITTERS)
    ]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        ids += [line.split()[-1] for line in out.splitlines() if line.startswith("queued ")]
    assert len(ids) == len(set(ids)) == SUBMITTERS * JOBS_EACH

    def all_finished():
        with engine.db.session() as session:
            return session.scalar(select(func.count()).where(Job.status.in_(["queued", "running"]))) == 0

    wait_for(all_finished, 240, "every job to finish", cluster, poll=0.5)
    with engine.db.session() as session:
        jobs = {job.id: job for job in session.scalars(select(Job))}
        images = session.execute(select(Image.job_id, Image.index, Image.sha256, Image.path)).all()
    assert set(jobs) == set(ids)
    assert {job.status for job in jobs.values()} == {"succeeded"}
    expected = {(job_id, index) for job_id, job in jobs.items() for index in range(job.count)}
    assert sorted((i.job_id, i.index) for i in images) == sorted(expected)  # none missing, none twice
    assert len({i.sha256 for i in images}) == len(images)  # every prompt/seed is a different picture
    assert all((cluster.home / i.path).is_file() for i in images)
    files = list((cluster.home / "images").rglob("*.png"))
    assert len(files) == len(images)
