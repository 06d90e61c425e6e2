"""The Celery executor: submitters enqueue job ids, ``studio worker`` processes run them.

The database is the single truth. A message only says "job X may need running"; whether
it does, and who runs it, is decided by the job row (see :func:`run_job`). That is what
makes every delivery safe to repeat: a duplicate message, a redelivery after a worker was
killed, or a re-enqueue by the reconciler all end in exactly one run that counts.

Settings that make Celery lose nothing:
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only when
  its task returns; if the pool process dies mid-job the message goes back to the queue,
  flagged ``redelivered``.
- ``worker_prefetch_multiplier=1``: a worker holds no more jobs than it can run, so a
  killed worker strands at most the jobs it was running.
- a visibility timeout longer than any job: Redis gives an unacknowledged message to
  another worker only after that long, so a slow job is never run twice at once. A worker
  killed as a whole is not waited for that long: its jobs' leases expire and the
  reconciler re-enqueues them (:mod:`studio.executors.reconcile`).
- no result backend: results, progress and errors live in the database.

Only ``studio worker``, ``studio queue`` and submitting with a broker import this module.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from celery import Celery
from celery.utils.time import get_exponential_backoff_interval
from kombu.exceptions import OperationalError as BrokerUnavailable

from studio.config import Settings
from studio.db.session import DatabaseError, redact
from studio.errors import NotFound, StudioError

if TYPE_CHECKING:
    from celery import Task

    from studio.engine import Engine, JobInfo

log = logging.getLogger(__name__)

TASK_NAME = "studio.run_job"
QUEUE_PREFIX = "studio."
#: Longer than the longest job: Redis re-delivers an unacknowledged message after this long.
VISIBILITY_TIMEOUT_S = 24 * 3600
#: Redis priority lists kombu keeps per queue (0 is served first).
PRIORITY_STEPS = [0, 3, 6, 9]
DB_RETRY_MAX_S = 60  # the longest pause between retries while the database is unreachable


def queue_name(model_id: str) -> str:
    """One queue per model, so a worker serves exactly the models it has loaded."""
    return f"{QUEUE_PREFIX}{model_id}"


def broker_priority(priority: int) -> int:
    """A job's priority (higher first) as a Redis message priority (lower first, 0..9)."""
    return min(9, max(0, 3 - priority))


@dataclass
class WorkerContext:
    """What a worker's pool processes need to run jobs; set by ``studio worker`` before forking."""

    settings: Settings
    device: str | None = None  # None: the settings' device
    batch: int = 1  # up to this many jobs share one generate() call
    heartbeat_s: float = 10.0
    reconcile_s: float = 60.0
    _engine: "Engine | None" = field(default=None, repr=False)
    _engine_pid: int = field(default=0, repr=False)

    def engine(self) -> "Engine":
        """This process's engine; a forked pool process builds its own, never sharing connections."""
        if self._engine is None or self._engine_pid != os.getpid():
            from studio.engine import Engine

            self._engine = Engine(self.settings)
            self._engine_pid = os.getpid()
        return self._engine


def make_app(settings: Settings, worker: WorkerContext | None = None) -> Celery:
    """The Celery app for this broker. ``worker`` is given only in ``studio worker``."""
    if not settings.broker_url:
        raise StudioError("no broker configured: set STUDIO_BROKER_URL (e.g. redis://127.0.0.1:6379/0)")
    app = Celery("studio", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=f"{QUEUE_PREFIX}default",
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S, "priority_steps": PRIORITY_STEPS},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
        enable_utc=True,
    )
    app.task(name=TASK_NAME, bind=True, max_retries=None)(run_job)
    app.studio = worker  # read by run_job in the pool processes
    return app


@lru_cache(maxsize=4)
def _client_app(settings: Settings) -> Celery:
    return make_app(settings)


def send(app: Celery, job: "JobInfo") -> None:
    """Publish one job id on its model's queue (the task id is the job id)."""
    app.send_task(
        TASK_NAME,
        args=[job.id],
        task_id=job.id,
        queue=queue_name(job.model_id),
        priority=broker_priority(job.priority),
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
    )


def enqueue(settings: Settings, job: "JobInfo") -> None:
    """Hand a stored, queued job to the workers.

    The job is already safe in the database; if the broker cannot be reached the job stays
    queued and ``studio queue reconcile`` (or the next worker start) enqueues it.
    """
    try:
        send(_client_app(settings), job)
    except BrokerUnavailable as exc:
        raise StudioError(
            f"job {job.id} is stored as queued, but the broker {redact(settings.broker_url or '')} cannot be "
            f"reached ({exc}); `studio queue reconcile` enqueues it once the broker is back"
        ) from None


def run_job(task: "Task", job_id: str) -> None:
    """Run one job (and, with batching, its peers) in this pool process.

    Who runs a job is decided here, from the job row, so that any delivery is safe:
    - queued: claim it and run it;
    - running, and its lease expired (the process running it died): take it over from that
      process, which counts an attempt, so a job that kills its workers is quarantined after
      ``max_attempts``. Two workers recovering the same job cannot both take it;
    - running with a live lease: someone runs it, this message is a duplicate and is dropped;
      unless the message was redelivered (the process that had it died moments ago, before
      its lease could run out) or is a retry (the process that had it gave it up when the
      database went away): then it is looked at again once the lease has run out;
    - finished: nothing to do.
    If the database is unreachable the task retries with exponential backoff and the
    message stays with Celery until then: the job is never dropped. A process that finds a
    job it gave up still running under its own name puts it back in the queue at once.
    """
    from studio.engine import DATABASE_UNAVAILABLE
    from studio.executors import liveness

    context: WorkerContext = task.app.studio
    engine = context.engine()
    worker_id = f"{task.request.hostname}:{os.getpid()}"
    try:
        for abandoned in engine.release_abandoned(worker_id):
            log.warning("job %s was left running by this process; queued again", abandoned.id)
            if abandoned.id != job_id:
                send(task.app, abandoned)
        try:
            job = engine.get(job_id)
        except NotFound:
            log.info("job %s no longer exists; message dropped", job_id)
            return
        take_over_from = None
        if job.status == "running":
            left = liveness.lease_left(engine.db, job.id)
            if left is None or left > 0:
                redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
                if left is not None and (redelivered or task.request.retries):
                    raise task.retry(countdown=math.ceil(left) + 1, max_retries=None)
                log.info("job %s is running on %s; duplicate message dropped", job.id, job.worker_id)
                return
            take_over_from = job.worker_id
        with liveness.lease(engine, worker_id, context.heartbeat_s):
            engine.run_batch(
                job.id, worker_id=worker_id, device=context.device, take_over_from=take_over_from, max_jobs=context.batch
            )
    except (*DATABASE_UNAVAILABLE, DatabaseError) as exc:
        countdown = max(1, get_exponential_backoff_interval(1, task.request.retries, DB_RETRY_MAX_S, full_jitter=True))
        log.warning("database unreachable running job %s; retrying in %d s (%s)", job_id, countdown, type(exc).__name__)
        raise task.retry(countdown=countdown) from exc
