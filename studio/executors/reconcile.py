"""Make the broker agree with the database, which is the truth about jobs.

Two kinds of job need a message they do not have:
- queued jobs the broker no longer holds (Redis was flushed or restarted without its data,
  or a submitter crashed between storing and enqueueing);
- running jobs whose lease expired: their worker died as a whole, and Redis would only
  hand their message to someone else after the visibility timeout.
Both are simply enqueued again. An extra message is harmless (the worker that gets it
looks at the job row first, see :func:`studio.executors.celery.run_job`), so racing a
submitter or another reconciler costs nothing but a no-op delivery.

It runs when a worker starts, every ``--reconcile`` seconds in each worker (one worker at
a time, under a Redis lock), and on ``studio queue reconcile``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select

from studio.db.models import Job, JobStatus
from studio.engine import JobInfo
from studio.executors import broker, liveness
from studio.executors.celery import queue_name, send

if TYPE_CHECKING:
    from celery import Celery

    from studio.db import Database

LOCK_KEY = "studio:reconcile"
TAKEN_GRACE_S = 60.0  # a live worker claims a job within moments of taking its message


@dataclass
class Reconciled:
    """What one reconciliation re-enqueued."""

    lost: list[str] = field(default_factory=list)  # queued jobs the broker did not hold
    orphaned: list[str] = field(default_factory=list)  # running jobs whose worker is gone

    @property
    def total(self) -> int:
        return len(self.lost) + len(self.orphaned)


def reconcile(app: "Celery", db: "Database", taken_grace_s: float = TAKEN_GRACE_S) -> Reconciled:
    """Re-enqueue every job that needs a message and has none; see the module docstring.

    A queued job whose message a worker took more than ``taken_grace_s`` ago without
    claiming the job counts as lost too: that worker died between the two.
    """
    with db.session() as session:
        queued = [JobInfo.from_row(row) for row in session.scalars(select(Job).where(Job.status == JobStatus.queued.value))]
    orphans = [JobInfo.from_row(row) for row in liveness.orphaned_jobs(db)]
    queues = {queue_name(job.model_id) for job in queued + orphans}
    with broker.redis_channel(app) as channel:
        held = broker.held(channel, queues) if queues else broker.Held()
    now = time.time()
    result = Reconciled()
    for job in queued:
        taken_at = held.taken.get(job.id)
        if job.id not in held.waiting and (taken_at is None or now - taken_at > taken_grace_s):
            send(app, job)
            result.lost.append(job.id)
    for job in orphans:  # the message its dead worker took is stuck until the visibility timeout
        if job.id not in held.waiting:
            send(app, job)
            result.orphaned.append(job.id)
    return result


def try_reconcile(app: "Celery", db: "Database", owner: str, hold_s: float) -> Reconciled | None:
    """Reconcile unless another worker did in the last ``hold_s`` seconds (then None)."""
    with broker.redis_channel(app) as channel:
        if not channel.client.set(LOCK_KEY, owner, nx=True, px=max(1, int(hold_s * 1000))):
            return None
    return reconcile(app, db)
