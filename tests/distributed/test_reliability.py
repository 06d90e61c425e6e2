"""Faults real clusters see, against real Redis, PostgreSQL and worker processes."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from studio.db.models import Worker
from tests.distributed.conftest import submit, wait_for


def running(engine, job_id: str, min_progress: float = 0.1):
    job = engine.get(job_id)
    return job if job.status == "running" and job.fraction >= min_progress else None


def node_of(job) -> str:
    return job.worker_id.rsplit(":", 1)[0]


def worker_process(cluster, engine, node: str):
    with engine.db.session() as session:
        pid = session.get(Worker, node).pid
    return next(w for w in cluster.workers if w.pid == pid)


def assert_one_set_of_images(engine, job) -> None:
    images = engine.images(job.id)
    assert sorted(i.index for i in images) == list(range(job.count))
    assert all((engine.settings.home / i.path).is_file() for i in images)


def test_sigkill_mid_job_is_redelivered_and_finishes_elsewhere(cluster, engine):
    """Kill the worker running a job (whole, or just its pool process) three times over."""
    cluster.start_worker()
    cluster.start_worker()
    for round_, whole in enumerate((True, False, True)):
        job = submit(engine, f"kill round {round_}", count=2, steps=16, delay=0.1)
        victim = wait_for(functools.partial(running, engine, job.id), 30, f"job {job.id} to run", cluster)
        if whole:
            worker_process(cluster, engine, node_of(victim)).kill()
            cluster.start_worker(wait=False)  # keep two workers
        else:
            os.kill(int(victim.worker_id.rsplit(":", 1)[1]), signal.SIGKILL)
        final = engine.wait(job.id, timeout=60)
        assert final.status == "succeeded", (final, cluster.logs())
        assert final.attempts == 2
        assert final.worker_id != victim.worker_id
        if whole:
            assert node_of(final) != node_of(victim)
        assert_one_set_of_images(engine, final)


def test_a_job_that_kills_its_workers_is_quarantined(cluster, engine):
    cluster.start_worker()
    cluster.start_worker()
    job = submit(engine, "poison", fail="exit")
    final = engine.wait(job.id, timeout=60)
    assert final.status == "failed", cluster.logs()
    assert final.attempts == 3
    assert final.error.startswith("quarantined after 3 attempts: the job's worker stopped before it finished")
    assert engine.images(job.id) == []
    healthy = submit(engine, "healthy after poison")
    assert engine.wait(healthy.id, timeout=30).status == "succeeded"
    overview = json.loads(cluster.studio("queue", "--json").stdout)
    assert [f["id"] for f in overview["failures"]] == [job.id]
    assert {w["state"] for w in overview["workers"]} == {"alive"} and len(overview["workers"]) == 2
    table = cluster.studio("queue").stdout
    assert "quarantined" in table and "alive" in table and "studio.testgen" in table


def test_redis_flush_then_reconcile_loses_no_job(cluster, engine, redis_url):
    broker = redis.Redis.from_url(redis_url)
    via_cli = [cluster.studio("submit", f"flushed cli {i}", "-m", "testgen", "-p", "size=4").stdout.split()[-1] for i in range(2)]
    direct = [submit(engine, f"flushed direct {i}").id for i in range(4)]
    depth = json.loads(cluster.studio("queue", "--json").stdout)["queues"]
    assert [(q["queue"], q["waiting"], q["queued"]) for q in depth] == [("studio.testgen", 6, 6)]

    broker.flushdb()
    assert cluster.studio("queue", "reconcile").stdout.strip() == "re-enqueued 6 lost and 0 orphaned jobs"
    assert cluster.studio("queue", "reconcile").stdout.strip() == "re-enqueued 0 lost and 0 orphaned jobs"

    later = [submit(engine, f"flushed later {i}").id for i in range(2)]
    broker.flushdb()  # now every message is gone; the worker's start-up reconciliation finds them
    cluster.start_worker()
    for job_id in via_cli + direct + later:
        assert engine.wait(job_id, timeout=60).status == "succeeded", cluster.logs()


def test_cancel_queued_and_running_jobs(cluster, engine):
    cluster.start_worker()
    long = submit(engine, "long running", steps=600, delay=0.05)  # 30 s: it is canceled long before, even on a starved CPU
    behind = submit(engine, "queued behind")
    wait_for(lambda: running(engine, long.id, 0.05), 30, "the long job to run", cluster)
    assert cluster.studio("cancel", behind.id).stdout.strip() == f"job {behind.id} canceled"
    assert cluster.studio("cancel", long.id).stdout.strip() == f"job {long.id} will stop at its next step"
    canceled_at = time.monotonic()
    final = engine.wait(long.id, timeout=30)
    assert (final.status, final.error) == ("canceled", "canceled while running")
    assert time.monotonic() - canceled_at < 3
    after = json.loads(cluster.studio("submit", "after the cancels", "-m", "testgen", "-p", "size=4", "--wait", "--json").stdout)
    assert after["status"] == "succeeded" and len(after["images"]) == 1
    failing = submit(engine, "fails on purpose", fail="error")
    assert engine.wait(failing.id, timeout=30).error == "testgen was asked to fail"
    assert cluster.studio("retry", failing.id).stdout.strip() == f"queued {failing.id} again"
    wait_for(lambda: engine.get(failing.id).status == "failed", 30, "the retried job to fail again", cluster)
    never = engine.get(behind.id)
    assert (never.status, never.attempts, never.started_at) == ("canceled", 0, None)
    assert engine.images(long.id) == [] and engine.images(behind.id) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_outage_is_retried_and_the_job_finishes(cluster, engine, postgres_url):
    """The worker reaches PostgreSQL through a proxy that is killed mid-job for a while."""
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    port = free_port()
    proxy_cmd = [sys.executable, str(Path(__file__).with_name("tcp_proxy.py")), str(port), url.host or "127.0.0.1", str(url.port or 5432)]

    def start_proxy():
        proxy = subprocess.Popen(proxy_cmd, stdout=subprocess.PIPE, text=True)
        cluster.others.append(proxy)
        assert proxy.stdout.readline().strip() == "listening"
        return proxy

    proxy = start_proxy()
    cluster.env["STUDIO_DATABASE_URL"] = url.set(port=port).render_as_string(hide_password=False)
    cluster.start_worker()
    job = submit(engine, "outage", count=2, steps=30, delay=0.1)
    wait_for(lambda: running(engine, job.id), 30, "the job to run", cluster)
    proxy.kill()
    proxy.wait()
    time.sleep(2.5)
    start_proxy()
    final = engine.wait(job.id, timeout=60)
    assert final.status == "succeeded", cluster.logs()
    assert final.attempts == 1  # the outage was not the job's fault
    assert_one_set_of_images(engine, final)
    assert "database unreachable running job" in cluster.logs()
