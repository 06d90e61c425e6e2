"""Is the process running a job still alive? Leases on jobs, heartbeats of workers.

While a worker process runs jobs it renews their lease (``jobs.updated_at``) every
heartbeat. A running job whose lease is older than :data:`LEASE_FACTOR` heartbeats belongs
to a process that is gone (SIGKILL, power loss, a crash in native code), whatever Celery
still believes; the reconciler gives such jobs to another worker. The heartbeat interval
used for a job is the one its worker announced in the ``workers`` table, so a reconciler
on another machine judges every worker by its own rhythm.

Each worker's main process also refreshes its ``workers`` row every heartbeat, which is
what ``studio queue`` shows as "workers seen recently".
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Iterator

from sqlalchemy import select

from studio.db.models import Job, JobStatus, Worker, utcnow
from studio.engine import LOCAL_PREFIX

if TYPE_CHECKING:
    from studio.db import Database
    from studio.engine import Engine

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_S = 10.0
LEASE_FACTOR = 3  # a lease expires after this many missed heartbeats
MIN_LEASE_S = 1.0


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every timestamp Studio writes is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def worker_of(job_worker_id: str) -> str:
    """The worker (Celery node) part of a job's ``worker_id`` (``<node>:<pid>``)."""
    return job_worker_id.rsplit(":", 1)[0]


def lease_s(heartbeat_s: float | None) -> float:
    return max(MIN_LEASE_S, LEASE_FACTOR * (heartbeat_s or DEFAULT_HEARTBEAT_S))


def time_left(job: Job, heartbeats: dict[str, float], now: datetime) -> float | None:
    """Seconds until a running job's lease runs out (<= 0: it has); None if it is not leased.

    Only jobs running on Celery workers are leased; in-process (``local:``) runs are not.
    """
    if job.status != JobStatus.running.value or not job.worker_id or job.worker_id.startswith(LOCAL_PREFIX):
        return None
    limit = lease_s(heartbeats.get(worker_of(job.worker_id)))
    return limit - (now - aware(job.updated_at)).total_seconds()


def expired(job: Job, heartbeats: dict[str, float], now: datetime) -> bool:
    left = time_left(job, heartbeats, now)
    return left is not None and left <= 0


def _heartbeats(session) -> dict[str, float]:
    return {worker_id: heartbeat for worker_id, heartbeat in session.execute(select(Worker.id, Worker.heartbeat_s))}


def lease_left(db: "Database", job_id: str) -> float | None:
    """Seconds left on a running job's lease (<= 0: expired); None if it is not leased."""
    with db.session() as session:
        job = session.get(Job, job_id)
        return None if job is None else time_left(job, _heartbeats(session), utcnow())


def orphaned_jobs(db: "Database") -> list[Job]:
    """Running jobs whose worker stopped renewing their lease."""
    now = utcnow()
    with db.session() as session:
        beats = _heartbeats(session)
        running = session.scalars(select(Job).where(Job.status == JobStatus.running.value)).all()
        return [job for job in running if expired(job, beats, now)]


@contextlib.contextmanager
def lease(engine: "Engine", worker_id: str, heartbeat_s: float) -> Iterator[None]:
    """Renew the lease of this process's running jobs every heartbeat while the block runs."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(heartbeat_s):
            try:
                engine.renew_lease(worker_id)
            except Exception as exc:  # noqa: BLE001 - a missed renewal must not kill the job
                log.warning("could not renew the lease of %s: %s", worker_id, type(exc).__name__)

    thread = threading.Thread(target=renew, name="studio-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def beat(db: "Database", node: str, *, queues: list[str], device: str, concurrency: int, batch: int,
         heartbeat_s: float, processes: list[int], stopped: bool = False) -> None:
    """Insert or refresh this worker's row."""
    now = utcnow()
    with db.session() as session:
        row = session.get(Worker, node)
        if row is None:
            row = Worker(id=node, hostname=socket.gethostname(), pid=os.getpid(), started_at=now)
            session.add(row)
        row.queues = list(queues)
        row.device = device
        row.concurrency = concurrency
        row.batch = batch
        row.heartbeat_s = heartbeat_s
        row.processes = list(processes)
        row.last_seen = now
        row.stopped_at = now if stopped else None


def alive(worker: Worker, now: datetime | None = None) -> bool:
    """A worker that has not stopped and has not missed its heartbeats."""
    late = (now or utcnow()) - aware(worker.last_seen) > timedelta(seconds=lease_s(worker.heartbeat_s))
    return worker.stopped_at is None and not late


def recent_workers(db: "Database", within_s: float = 300.0) -> list[Worker]:
    """Workers whose last heartbeat is at most ``within_s`` old, newest first."""
    since = utcnow() - timedelta(seconds=within_s)
    with db.session() as session:
        rows = session.scalars(select(Worker).order_by(Worker.last_seen.desc())).all()
        return [row for row in rows if aware(row.last_seen) >= since]


def forget_workers(db: "Database", older_than_s: float = 7 * 24 * 3600) -> int:
    """Drop rows of workers not seen for a long time (each worker start adds a row)."""
    since = utcnow() - timedelta(seconds=older_than_s)
    with db.session() as session:
        rows = session.scalars(select(Worker)).all()
        old = [row for row in rows if aware(row.last_seen) < since]
        for row in old:
            session.delete(row)
        return len(old)
