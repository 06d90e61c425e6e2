"""Where jobs run: in this process (default) or on Celery workers (when a broker is configured)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from studio.config import Settings
    from studio.engine import Engine
    from studio.records import JobInfo


def uses_broker(settings: "Settings") -> bool:
    return bool(settings.broker_url)


def dispatch(engine: "Engine", job: "JobInfo", run_here: "Callable[[JobInfo], JobInfo] | None" = None) -> "JobInfo":
    """Start a submitted job: on the workers when a broker is configured, else in this process.

    With a broker the job is enqueued and returned as it is now (queued); without one it runs
    here through ``run_here`` (e.g. with a progress bar), by default :meth:`Engine.run`.
    """
    if uses_broker(engine.settings):
        from studio.executors.celery import enqueue

        enqueue(engine.settings, job)
        return engine.get(job.id)
    return run_here(job) if run_here is not None else engine.run(job.id)
