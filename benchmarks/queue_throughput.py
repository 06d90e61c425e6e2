"""Queue throughput: jobs end to end through Celery + Redis + PostgreSQL versus in-process.

All runs use one PostgreSQL database and the test plugin's generator with tiny images, so the
difference is what the distributed path adds: the broker round trip, the worker's claim,
lease and heartbeat, and polling for the result. Measured in one run, side by side:
- in-process: submit + ``Engine.run`` in this process (the local executor's path);
- through Celery, one job at a time (latency: submit -> succeeded as seen by a waiting client);
- through Celery with 1 and 2 workers, jobs submitted as fast as possible (throughput);
- dynamic batching, ``--batch 1`` versus ``--batch 8``, on a generator whose cost is per
  ``generate()`` call (the test plugin with a fixed delay per step, as a GPU forward pass is),
  and on GALIP when its weights are installed.
The Celery rows are compared with the in-process row, each ``--batch 8`` row with its
``--batch 1`` row.
Usage: python benchmarks/queue_throughput.py [--quick]
(needs Redis and PostgreSQL on 127.0.0.1, or STUDIO_TEST_REDIS_URL / STUDIO_TEST_POSTGRES_URL;
pip install -e ".[celery]")
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from common import report, use_test_plugins

from studio.plumbing import one_line

POSTGRES_ADMIN_URL = os.environ.get("STUDIO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("STUDIO_TEST_REDIS_URL", "redis://127.0.0.1:6379")
FAST = {"size": 4, "steps": 1}
PER_CALL = {"size": 4, "steps": 1, "delay": 0.05}  # 50 ms per generate() call, whatever the batch


@contextmanager
def postgres_database():
    import sqlalchemy

    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"studio_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def redis_database():
    """A Redis database number nobody uses now (empty), flushed afterwards."""
    import redis

    base = REDIS_URL.rstrip("/")
    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{number}")
        if client.dbsize() == 0 and client.set("studio-bench:owner", os.getpid(), nx=True):
            break
        client.close()
    else:
        raise RuntimeError("no empty Redis database number")
    try:
        yield f"{base}/{number}"
    finally:
        client.flushdb()
        client.close()


class Workers:
    """``studio worker`` subprocesses, stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.procs = env, logs, []

    def start(self, count: int, *args: str) -> None:
        started = []
        for _ in range(count):
            log = self.logs / f"worker-{len(self.procs)}.log"
            with open(log, "w") as handle:
                proc = subprocess.Popen([sys.executable, "-m", "studio", "worker", *args],
                                        env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.append(proc)
            started.append((proc, log))
        for proc, log in started:
            deadline = time.monotonic() + 120
            while "ready." not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs = []


def unfinished(engine, ids: list[str]) -> int:
    from sqlalchemy import func, select

    from studio.db.models import Job

    with engine.db.session() as session:
        return session.scalar(select(func.count()).where(Job.id.in_(ids), Job.status.in_(["queued", "running"])))


def through_celery(engine, n: int, params: dict, model: str = "testgen", prompt: str = "a blue square") -> float:
    """Submit ``n`` jobs as fast as possible; seconds until every one succeeded."""
    from studio.executors.celery import enqueue

    start = time.perf_counter()
    ids = []
    for i in range(n):
        job = engine.submit(f"{prompt} {i}", model, seed=i, params=params)
        enqueue(engine.settings, job)
        ids.append(job.id)
    while unfinished(engine, ids):
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    failed = [j for j in ids if engine.get(j).status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed: {engine.get(failed[0]).error}")
    return elapsed


def one_at_a_time(engine, n: int) -> list[float]:
    """Round trips: submit, then wait (polling like `studio wait`) until it succeeded."""
    from studio.executors.celery import enqueue

    times = []
    for i in range(n):
        start = time.perf_counter()
        job = engine.submit(f"latency {i}", "testgen", seed=i, params=FAST)
        enqueue(engine.settings, job)
        if engine.wait(job.id, poll=0.005).status != "succeeded":
            raise RuntimeError(f"job {job.id} failed")
        times.append(time.perf_counter() - start)
    return times


def in_process(engine, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        if engine.run(engine.submit(f"in process {i}", "testgen", seed=i, params=FAST).id).status != "succeeded":
            raise RuntimeError("in-process job failed")
    return time.perf_counter() - start


def galip_usable(engine) -> str | None:
    """None if GALIP generates here, else why not."""
    try:
        job = engine.run(engine.submit("a red circle", "galip", seed=0).id)
    except Exception as exc:  # noqa: BLE001 - not installed, unknown model...
        return one_line(exc)
    return None if job.status == "succeeded" else (job.error or job.status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    use_test_plugins()  # the test plugin, for this run only
    n, latency_n, batch_n, galip_n = (30, 10, 24, 8) if args.quick else (300, 50, 160, 48)

    try:
        import celery  # noqa: F401
        import psycopg  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        print(f"skipped: {exc.name} is not installed (pip install -e '.[celery]')")
        return
    try:
        with postgres_database() as pg_url, redis_database() as broker_url:
            rows, extra = measure(pg_url, broker_url, n, latency_n, batch_n, galip_n)
    except (OSError, RuntimeError) as exc:
        raise SystemExit(f"queue_throughput: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - services absent: say so and leave
        if "connect" in str(exc).lower():
            print(f"skipped: Redis or PostgreSQL not reachable ({one_line(exc)})")
            return
        raise
    report("queue_throughput", "Jobs end to end: Celery + Redis + PostgreSQL vs in-process (same generator)",
           ["run", "workers", "jobs", "s", "jobs/s", "ms/job", "vs baseline"], rows, extra)


def measure(pg_url: str, broker_url: str, n: int, latency_n: int, batch_n: int, galip_n: int):
    from studio.config import load_settings
    from studio.engine import Engine

    home = tempfile.mkdtemp(prefix="studio-bench-")
    env = dict(os.environ, STUDIO_HOME=home, STUDIO_DATABASE_URL=pg_url, STUDIO_BROKER_URL=broker_url,
               STUDIO_DEVICE="cpu", STUDIO_LOAD_PLUGINS="testgen,galip", PYTHONUNBUFFERED="1")
    engine = Engine(load_settings(env))
    engine.run(engine.submit("warm up", "testgen", params=FAST).id)
    workers = Workers(env, Path(home))
    rows: list[list] = []

    def row(name: str, count: int, jobs: int, seconds: float, base: float | None) -> float:
        """One table row; ``base`` is the baseline's ms/job (None: this row is the baseline)."""
        per_job = seconds / jobs * 1000
        rows.append([name, count, jobs, round(seconds, 2), round(jobs / seconds, 1), round(per_job, 2),
                     "baseline" if base is None else f"{per_job / base:.2f}x"])
        return per_job

    try:
        local_s = in_process(engine, n)
        base_ms = local_s / n * 1000
        row("in-process (engine.run)", 0, n, local_s, None)

        workers.start(1, "-Q", "testgen")
        through_celery(engine, 5, FAST)  # warm the worker: plugin registry, generator cache
        latencies = one_at_a_time(engine, latency_n)
        rows.append(["celery, one job at a time (median)", 1, latency_n, round(sum(latencies), 2),
                     round(1 / statistics.median(latencies), 1), round(statistics.median(latencies) * 1000, 2),
                     f"{statistics.median(latencies) * 1000 / base_ms:.2f}x"])
        row("celery, submitted all at once", 1, n, through_celery(engine, n, FAST), base_ms)
        workers.start(1, "-Q", "testgen")
        through_celery(engine, 4, FAST)
        row("celery, submitted all at once", 2, n, through_celery(engine, n, FAST), base_ms)
        workers.stop()

        per_job: dict[int, float] = {}
        for batch in (1, 8):
            workers.start(1, "-Q", "testgen", "--batch", str(batch))
            through_celery(engine, 2, PER_CALL)
            seconds = through_celery(engine, batch_n, PER_CALL)
            per_job[batch] = row(f"testgen 50 ms/call, --batch {batch}", 1, batch_n, seconds, per_job.get(1))
            workers.stop()
        extra = {"batching_speedup_testgen": round(per_job[1] / per_job[8], 2)}

        reason = galip_usable(engine)
        if reason is None:
            galip: dict[int, float] = {}
            for batch in (1, 8):
                workers.start(1, "-Q", "galip", "--batch", str(batch))
                through_celery(engine, 1, {}, model="galip")
                seconds = through_celery(engine, galip_n, {}, model="galip", prompt="a red circle")
                galip[batch] = row(f"galip (cpu), --batch {batch}", 1, galip_n, seconds, galip.get(1))
                workers.stop()
            extra["batching_speedup_galip"] = round(galip[1] / galip[8], 2)
        else:
            extra["galip_skipped"] = reason
            print(f"galip rows skipped: {reason}")
    finally:
        workers.stop()
        engine.db.dispose()
    extra["in_process_ms_per_job"] = round(base_ms, 2)
    return rows, extra


if __name__ == "__main__":
    main()
