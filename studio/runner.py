"""The worker side of the engine: claim jobs, run them, store their files, keep their leases.

One code path runs jobs (:meth:`Runner.execute`): a single job is a batch of one. Images are
written as files first and recorded, together with the final status, in one transaction: a
crash or a failing generator never leaves half a file or a job that claims images it does
not have. Every executor (in-process or Celery) goes through here, so storage, progress,
cancellation and attempts behave the same everywhere.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any, Callable, Iterable

from sqlalchemy import select, update

from studio import store
from studio.db import Image, Job, JobStatus
from studio.db.models import utcnow
from studio.engine import (
    DATABASE_UNAVAILABLE,
    PROGRESS_INTERVAL_S,
    PROGRESS_SCALE,
    Engine,
    ProgressHook,
    StatusHook,
    core_version,
    default_worker_id,
    finish_row,
)
from studio.errors import GenerationError, JobCanceled, UnknownModel
from studio.generators import ModelSpec, Request
from studio.plugins import fire_job_finished
from studio.plumbing import new_id
from studio.records import ImageInfo, JobInfo

log = logging.getLogger(__name__)


def _failure_reason(exc: BaseException) -> str:
    """What a failed job's error says: a generator's own message, or the exception's type and text."""
    if isinstance(exc, (GenerationError, UnknownModel)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


class Runner:
    """Runs jobs of one :class:`Engine` (its settings, database, plugins and loaded generators)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def settings(self):
        return self.engine.settings

    @property
    def db(self):
        return self.engine.db

    @property
    def registry(self):
        return self.engine.registry

    @property
    def cache(self):
        return self.engine.cache

    def claim(
        self, job_id: str, worker_id: str, *, reclaim_running: bool = False, dead_worker: str | None = None
    ) -> JobInfo | None:
        """Atomically move a job to running for this worker; None if it is not ours to run.

        ``reclaim_running`` lets a redelivered job (its worker died) be taken over; a job that
        has used up its attempts is then failed instead of run again. ``dead_worker`` narrows
        a takeover to a job still held by that worker, so two workers recovering the same job
        cannot take it from each other.
        """
        allowed = [JobStatus.queued.value] + ([JobStatus.running.value] if reclaim_running else [])
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None or job.status not in allowed:
                return None
            if dead_worker is not None and job.status == JobStatus.running.value and job.worker_id != dead_worker:
                return None
            if job.cancel_requested:
                finish_row(job, JobStatus.canceled, "canceled")
                return None
            if job.attempts >= self.settings.max_attempts:
                finish_row(
                    job,
                    JobStatus.failed,
                    f"quarantined after {job.attempts} attempts: the job's worker stopped before it finished "
                    f"(last worker {job.worker_id})",
                )
                return None
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(allowed), Job.attempts == job.attempts)
                .values(
                    status=JobStatus.running.value,
                    attempts=Job.attempts + 1,
                    worker_id=worker_id,
                    started_at=utcnow(),
                    progress_done=0,
                    error=None,
                )
            )
            if result.rowcount != 1:
                return None
            session.expire(job)
            return JobInfo.from_row(session.get(Job, job_id))

    def run(
        self,
        job_id: str,
        *,
        worker_id: str | None = None,
        device: str | None = None,
        reclaim_running: bool = False,
        on_progress: ProgressHook | None = None,
        on_status: StatusHook | None = None,
    ) -> JobInfo:
        """Claim and execute one job to its end; returns the final snapshot.

        Raises nothing for a job that fails: the failure is recorded on the job. ``on_status``
        hears the stages between progress steps (loading the model's weights, generating).
        """
        worker_id = worker_id or default_worker_id()
        try:
            device = device or self.settings.resolve_device()  # before the claim: it may import torch (slow)
            job = self.claim(job_id, worker_id, reclaim_running=reclaim_running)
            if job is None:
                return self.engine.get(job_id)
            return self.execute([job], worker_id, device, on_progress, raise_unavailable=False, on_status=on_status)[0]
        except BaseException as exc:
            # Ctrl-C, SIGTERM/SIGHUP (see studio.executors.local), a bad device...: however this
            # process stops, the job it was given does not stay queued or running behind it.
            self._abandon(job_id, worker_id, exc)
            raise

    def _abandon(self, job_id: str, worker_id: str, exc: BaseException) -> None:
        """End a job this process was running (or about to run) and will not finish."""
        from studio.plumbing import one_line

        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        status = JobStatus.canceled if interrupted else JobStatus.failed
        try:
            with self.db.session() as session:
                row = session.get(Job, job_id)
                if row is None:
                    return
                if row.status == JobStatus.queued.value:
                    finish_row(row, status, "interrupted before it started" if interrupted
                               else f"not started: {one_line(exc, 300)}")
                elif row.status == JobStatus.running.value and row.worker_id == worker_id:
                    finish_row(row, status, "interrupted" if interrupted else _failure_reason(exc))
        except BaseException:  # noqa: BLE001 - stopping anyway; `studio jobs` reaps it later
            log.debug("could not mark job %s interrupted", job_id, exc_info=True)

    def _store_files(self, job: JobInfo, spec: ModelSpec, description: dict[str, Any], device: str, results) -> list:
        home = self.settings.ensure_home()
        plugin_info = self.registry.plugins.get(spec.plugin)
        stored = []
        for index, result in enumerate(results):
            recipe = {
                "prompt": job.prompt,
                "model": spec.id,
                "seed": job.seed + index,
                "params": job.params,
                "plugin": spec.plugin,
                "plugin_version": plugin_info.version if plugin_info else None,
                "core_version": core_version(),
                "generator": description,
                "weights_sha256": description.get("weights_sha256"),
                "device": device,
                "dtype": description.get("dtype", "float32"),
                **({"extra": result.extra} if result.extra else {}),
            }
            stored.append((index, recipe, store.save_image(home, result.image, recipe)))
        return stored

    def _end(
        self,
        job: JobInfo,
        worker_id: str,
        status: JobStatus,
        error: str | None,
        stored: Iterable[tuple[int, dict[str, Any], store.StoredFile]] = (),
    ) -> JobInfo:
        """Record the outcome, and the images, in one transaction; only if the job is still ours."""
        with self.db.session() as session:
            row = session.get(Job, job.id, with_for_update=not self.db.is_sqlite)
            if row is None or row.status != JobStatus.running.value or row.worker_id != worker_id:
                log.warning("job %s was taken over or changed while running; result dropped", job.id)
                return JobInfo.from_row(row) if row is not None else job
            if status is JobStatus.succeeded:
                existing = {i.index for i in row.images}
                for index, recipe, file in stored:
                    if index in existing:
                        continue
                    row.images.append(
                        Image(
                            id=new_id(),
                            index=index,
                            seed=row.seed + index,
                            sha256=file.sha256,
                            path=file.path,
                            width=file.width,
                            height=file.height,
                            recipe=recipe,
                        )
                    )
                row.progress_done = row.progress_total
            finish_row(row, status, error)
            session.flush()
            info = JobInfo.from_row(row)
            images = [ImageInfo.from_row(i) for i in row.images] if status is JobStatus.succeeded else []
        fire_job_finished(self.registry, info, images)
        return info


    def run_batch(
        self,
        job_id: str,
        *,
        worker_id: str,
        device: str | None = None,
        take_over_from: str | None = None,
        max_jobs: int = 1,
        on_progress: ProgressHook | None = None,
    ) -> list[JobInfo]:
        """Run a job like :meth:`run`, together with up to ``max_jobs - 1`` queued peers.

        Peers are queued jobs of the same model with the same parameters; they are claimed
        like the job itself and generated in the same ``generate()`` call. Each image still
        derives from its own request only, so the pixels are those of separate runs, and
        each job ends on its own (a canceled peer does not stop the others).
        ``take_over_from`` names the dead worker a running job is taken from (see :meth:`claim`).

        Unlike :meth:`run`, a lost database connection is raised instead of being recorded
        as a failure: the job did nothing wrong, and the caller retries once the database
        is back. Returns the final snapshots, the requested job first.
        """
        lead = self.claim(job_id, worker_id, reclaim_running=take_over_from is not None, dead_worker=take_over_from)
        if lead is None:
            return [self.engine.get(job_id)]
        jobs = [lead] + self._claim_peers(lead, worker_id, max_jobs - 1)
        return self.execute(jobs, worker_id, device or self.settings.resolve_device(), on_progress)

    def _claim_peers(self, lead: JobInfo, worker_id: str, limit: int) -> list[JobInfo]:
        """Claim queued jobs that can share ``lead``'s batch: same model, same parameters, room left."""
        if limit <= 0:
            return []
        try:
            room = self.registry.model(lead.model_id).max_batch - lead.count
        except UnknownModel:
            return []
        if room <= 0:
            return []
        with self.db.session() as session:
            rows = session.scalars(
                select(Job)
                .where(
                    Job.status == JobStatus.queued.value,
                    Job.model_id == lead.model_id,
                    Job.cancel_requested.is_(False),
                    Job.count <= room,
                    Job.id != lead.id,
                )
                .order_by(Job.priority.desc(), Job.id)
                .limit(limit * 4)  # parameters are compared here, not in SQL (JSON equality differs by dialect)
            ).all()
            candidates = [(row.id, row.count) for row in rows if row.params == lead.params]
        peers: list[JobInfo] = []
        for candidate_id, count in candidates:
            if len(peers) == limit:
                break
            if count > room:
                continue
            peer = self.claim(candidate_id, worker_id)
            if peer is not None:
                peers.append(peer)
                room -= peer.count
        return peers

    def execute(
        self,
        jobs: list[JobInfo],
        worker_id: str,
        device: str,
        on_progress: ProgressHook | None,
        *,
        raise_unavailable: bool = True,
        on_status: StatusHook | None = None,
    ) -> list[JobInfo]:
        """The one path that runs claimed jobs: generate, store the files, record the outcome.

        A single job is a batch of one. ``raise_unavailable``: a lost database connection is
        raised (a worker retries once the database is back) instead of failing the jobs.
        """
        reporter = _BatchReporter(self, jobs, worker_id, on_progress)
        try:
            spec = self.registry.model(jobs[0].model_id)
            if on_status is not None and (spec.id, device) not in self.cache.loaded():
                on_status("loading model weights")  # the slow part of a first run, before any step
            generator = self.cache.get(spec, device)
            if on_status is not None:
                on_status("generating")
            description = generator.describe()
            work = [(job, Request(job.prompt, job.seed + i, dict(job.params), index=i)) for job in jobs for i in range(job.count)]
            results: dict[str, list] = {job.id: [] for job in jobs}
            for start in range(0, len(work), max(1, spec.max_batch)):
                chunk = work[start : start + max(1, spec.max_batch)]
                reporter.chunk(chunk)
                chunk_results = generator.generate([request for _, request in chunk], reporter)
                if len(chunk_results) != len(chunk):
                    raise GenerationError(
                        f"model {spec.id!r} returned {len(chunk_results)} images for {len(chunk)} requests"
                    )
                for (job, _), result in zip(chunk, chunk_results, strict=True):
                    results[job.id].append(result)
                reporter(1, 1)
            stored = {job.id: self._store_files(job, spec, description, device, results[job.id]) for job in reporter.live}
        except JobCanceled:
            return self._end_all(jobs, reporter, worker_id, JobStatus.canceled, "canceled while running")
        except DATABASE_UNAVAILABLE:
            if raise_unavailable:
                raise
            log.debug("job %s failed: database unavailable", jobs[0].id, exc_info=True)
            return self._end_all(jobs, reporter, worker_id, JobStatus.failed, _failure_reason(sys.exc_info()[1]))
        except KeyboardInterrupt:
            self._end_all(jobs, reporter, worker_id, JobStatus.canceled, "interrupted")
            raise
        except Exception as exc:  # noqa: BLE001 - any generator bug fails the job, not the worker
            if len(reporter.live) > 1:
                # One bad request must not fail its peers: run each alone to find out whose it is.
                log.debug("batch of %d jobs failed; running them one by one", len(reporter.live), exc_info=True)
                alone = {job.id: self.execute([job], worker_id, device, on_progress,
                                              raise_unavailable=raise_unavailable)[0] for job in reporter.live}
                return [alone.get(job.id) or self.engine.get(job.id) for job in jobs]
            log.debug("job %s failed", jobs[0].id, exc_info=True)
            return self._end_all(jobs, reporter, worker_id, JobStatus.failed, _failure_reason(exc))
        ended = {job.id: self._end(job, worker_id, JobStatus.succeeded, None, stored[job.id]) for job in reporter.live}
        return [ended.get(job.id) or self.engine.get(job.id) for job in jobs]

    def _end_all(
        self, jobs: list[JobInfo], reporter: "_BatchReporter", worker_id: str, status: JobStatus, error: str
    ) -> list[JobInfo]:
        ended = {job.id: self._end(job, worker_id, status, error) for job in reporter.live}
        return [ended.get(job.id) or self.engine.get(job.id) for job in jobs]

    def release_abandoned(self, worker_id: str) -> list[JobInfo]:
        """Put back in the queue the jobs still marked running under ``worker_id``.

        A worker process runs one task at a time, so when it starts a task, any job still
        running under its name was abandoned, typically because the database went away in
        the middle of it. Such a job did nothing wrong: its attempt is given back.
        """
        with self.db.session() as session:
            rows = session.scalars(
                select(Job).where(Job.status == JobStatus.running.value, Job.worker_id == worker_id)
            ).all()
            for row in rows:
                row.status = JobStatus.queued.value
                row.attempts = max(0, row.attempts - 1)
                row.worker_id = None
                row.started_at = None
                row.progress_done = 0
            session.flush()
            return [JobInfo.from_row(row) for row in rows]

    def renew_lease(self, worker_id: str) -> int:
        """Mark the jobs running under ``worker_id`` as alive (their ``updated_at``); returns how many.

        A running job whose ``updated_at`` is old belongs to a process that died; the Celery
        reconciler hands such jobs to another worker.
        """
        with self.db.session() as session:
            result = session.execute(
                update(Job)
                .where(Job.status == JobStatus.running.value, Job.worker_id == worker_id)
                .values(updated_at=utcnow())
            )
            return result.rowcount


class _ProgressReporter:
    """The progress callback handed to generators: records progress, enforces cancellation."""

    def __init__(self, runner: "Runner", job: JobInfo, hook: ProgressHook | None) -> None:
        self.runner = runner
        self.job = job
        self.hook = hook
        self.offset = 0
        self.size = 1
        self.last_write = 0.0

    def batch(self, offset: int, size: int) -> None:
        self.offset, self.size = offset, size
        self._report(0.0, force=True)

    def __call__(self, done: int, total: int) -> None:
        fraction = min(1.0, max(0.0, done / total)) if total else 1.0
        self._report(fraction, force=False)

    def _report(self, fraction: float, force: bool) -> None:
        job_fraction = (self.offset + fraction * self.size) / self.job.count
        if self.hook is not None:
            self.hook(self.job, job_fraction)
        now = time.monotonic()
        if not force and now - self.last_write < PROGRESS_INTERVAL_S:
            return
        self.last_write = now
        with self.runner.db.session() as session:
            row = session.get(Job, self.job.id)
            if row is None:
                raise JobCanceled()
            if row.cancel_requested or row.status != JobStatus.running.value:
                raise JobCanceled()
            row.progress_done = int(job_fraction * self.job.count * PROGRESS_SCALE)


class _BatchReporter:
    """The progress callback for a batch of jobs sharing one ``generate()`` call.

    It drives one :class:`_ProgressReporter` per job. A job canceled mid-batch is marked
    canceled at once and its images are discarded; the generator is only stopped when
    every job of the batch is canceled.
    """

    def __init__(self, runner: "Runner", jobs: list[JobInfo], worker_id: str, hook: ProgressHook | None) -> None:
        self.runner = runner
        self.worker_id = worker_id
        self.reporters = {job.id: _ProgressReporter(runner, job, hook) for job in jobs}
        self.live = list(jobs)
        self.current: list[JobInfo] = []

    def chunk(self, chunk: list[tuple[JobInfo, Request]]) -> None:
        """A new ``generate()`` call starts with these (job, request) pairs."""
        self.current = [job for job in self.live if any(j is job for j, _ in chunk)]
        for job in list(self.current):
            indices = [request.index for j, request in chunk if j is job]
            self._guard(job, functools.partial(self.reporters[job.id].batch, min(indices), len(indices)))

    def __call__(self, done: int, total: int) -> None:
        for job in list(self.current):
            self._guard(job, functools.partial(self.reporters[job.id], done, total))

    def _guard(self, job: JobInfo, report: Callable[[], None]) -> None:
        try:
            report()
        except JobCanceled:
            if len(self.live) == 1:
                raise  # the last job of the batch: stop the generator, the caller ends the job
            self.live.remove(job)
            self.current.remove(job)
            self.runner._end(job, self.worker_id, JobStatus.canceled, "canceled while running")
