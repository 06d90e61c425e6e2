"""The state of the distributed queue, gathered for ``studio queue``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from studio.db.models import Job, JobStatus, utcnow
from studio.engine import JobInfo
from studio.executors import broker, liveness
from studio.executors.celery import queue_name
from studio.plumbing import one_line

if TYPE_CHECKING:
    from celery import Celery

    from studio.db import Database
    from studio.plugins import Registry

FAILURES_SHOWN = 5
FAILURES_WITHIN = timedelta(hours=24)


@dataclass
class QueueRow:
    queue: str
    model_id: str
    waiting: int | None  # messages in the broker; None when the broker is unreachable
    queued: int  # queued jobs in the database
    running: int


@dataclass
class WorkerRow:
    id: str
    hostname: str
    queues: list[str]
    device: str
    concurrency: int
    batch: int
    last_seen: datetime
    state: str  # alive, late (missed heartbeats) or stopped


@dataclass
class Overview:
    queues: list[QueueRow] = field(default_factory=list)
    running: list[JobInfo] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)
    failures: list[JobInfo] = field(default_factory=list)
    broker_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "queues": [vars(q) for q in self.queues],
            "running": [j.as_dict() for j in self.running],
            "workers": [dict(vars(w), last_seen=w.last_seen.isoformat()) for w in self.workers],
            "failures": [j.as_dict() for j in self.failures],
            "broker_error": self.broker_error,
        }


def _counts(db: "Database") -> dict[tuple[str, str], int]:
    with db.session() as session:
        rows = session.execute(
            select(Job.model_id, Job.status, func.count())
            .where(Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))
            .group_by(Job.model_id, Job.status)
        ).all()
    return {(model, status): n for model, status, n in rows}


def _worker_state(row, now: datetime) -> str:
    if row.stopped_at is not None:
        return "stopped"
    return "alive" if liveness.alive(row, now) else "late"


def gather(app: "Celery", db: "Database", registry: "Registry") -> Overview:
    """Queues of every registered model (and any model with jobs), workers, running jobs, failures."""
    counts = _counts(db)
    models = sorted(set(registry.models) | {model for model, _ in counts})
    overview = Overview()
    waiting: dict[str, int | None] = {}
    try:
        with broker.redis_channel(app) as channel:
            waiting = {m: broker.depth(channel, queue_name(m)) for m in models}
    except Exception as exc:  # noqa: BLE001 - show the database's view anyway
        overview.broker_error = one_line(exc)
    for model in models:
        overview.queues.append(
            QueueRow(queue_name(model), model, waiting.get(model), counts.get((model, "queued"), 0), counts.get((model, "running"), 0))
        )
    now = utcnow()
    since = now - FAILURES_WITHIN
    with db.session() as session:
        overview.running = [
            JobInfo.from_row(r)
            for r in session.scalars(select(Job).where(Job.status == JobStatus.running.value).order_by(Job.started_at))
        ]
        failed = session.scalars(
            select(Job).where(Job.status == JobStatus.failed.value).order_by(Job.finished_at.desc()).limit(FAILURES_SHOWN * 4)
        ).all()
        overview.failures = [
            JobInfo.from_row(r) for r in failed if r.finished_at and liveness.aware(r.finished_at) >= since
        ][:FAILURES_SHOWN]
    overview.workers = [
        WorkerRow(w.id, w.hostname, list(w.queues), w.device, w.concurrency, w.batch, liveness.aware(w.last_seen), _worker_state(w, now))
        for w in liveness.recent_workers(db)
    ]
    return overview
