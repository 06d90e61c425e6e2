"""Submit, run, cancel and retry jobs; the job state machine lives here and only here.

    queued -> running -> succeeded | failed | canceled
    queued -> canceled            (never started)
    failed | canceled -> queued   (retry)

Every executor (in-process or Celery) goes through :meth:`Engine.run`, so storage, progress,
cancellation and attempts behave the same everywhere. Images are written as files first and
recorded, together with the final status, in one transaction: a crash or a failing
generator never leaves half a file or a job that claims images it does not have.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable

from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session
from ulid import ULID

from studio import store
from studio.config import Settings
from studio.db import Database, Image, Job, JobStatus, open_database
from studio.db.models import FINISHED, utcnow
from studio.errors import NotFound, StudioError, UsageError
from studio.generators import GenerationError, JobCanceled, ModelSpec, ParamError, Request
from studio.loader import GeneratorCache, generators
from studio.plugins import Registry, UnknownModel, fire_job_finished, get_registry
from studio.records import ImageInfo, JobInfo

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 2000
MAX_COUNT = 256
MAX_SEED = 2**63 - 1
PROGRESS_INTERVAL_S = 0.25  # how often progress is written and cancellation checked
PROGRESS_SCALE = 1000  # progress_total = count * PROGRESS_SCALE
#: Errors that mean "the database is unreachable right now", not "the job is bad".
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)


ProgressHook = Callable[[JobInfo, float], None]


def core_version() -> str:
    try:
        return importlib.metadata.version("studio")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


LOCAL_PREFIX = "local:"


def default_worker_id() -> str:
    """The id of an in-process run: ``local:HOST:PID``, so orphans can be recognised later."""
    return f"{LOCAL_PREFIX}{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Engine:
    """Jobs against one database and one plugin registry. Cheap to create; opens lazily."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database | None = None,
        registry: Registry | None = None,
        cache: GeneratorCache | None = None,
    ) -> None:
        self.settings = settings
        self._db = db
        self._registry = registry
        self.cache = cache or generators

    @property
    def db(self) -> Database:
        if self._db is None:
            self.settings.ensure_home()
            self._db = open_database(self.settings.database_url)
        return self._db

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = get_registry(self.settings.load_plugins)
        return self._registry

    # ---- submitting -------------------------------------------------------------------

    def validate(self, prompt: str, model_id: str, seed: int | None, count: int, params: dict[str, Any]):
        """Check everything before anything is stored; returns (spec, prompt, seed, params)."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise UsageError("the prompt is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UsageError(f"the prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}")
        try:
            spec = self.registry.model(model_id)
        except UnknownModel as exc:
            raise UsageError(str(exc)) from None
        if not 1 <= count <= MAX_COUNT:
            raise UsageError(f"count must be between 1 and {MAX_COUNT}, got {count}")
        if seed is None:
            seed = random.randrange(0, 2**32)
        if seed < 0 or seed + count - 1 > MAX_SEED:
            raise UsageError(f"seed must be between 0 and {MAX_SEED - count + 1}, got {seed}")
        try:
            full_params = spec.validate_params(params)
        except ParamError as exc:
            raise UsageError(str(exc)) from None
        for p in spec.params:
            if p.type == "image" and full_params.get(p.name):
                from studio.inputs import InputError, store_input

                try:
                    full_params[p.name] = store_input(self.settings, full_params[p.name])
                except InputError as exc:
                    raise UsageError(f"parameter {p.name!r}: {exc}") from None
        return spec, prompt, seed, full_params

    def submit(
        self,
        prompt: str,
        model_id: str,
        *,
        seed: int | None = None,
        count: int = 1,
        params: dict[str, Any] | None = None,
        priority: int = 0,
        parent_id: str | None = None,
    ) -> JobInfo:
        spec, prompt, seed, full_params = self.validate(prompt, model_id, seed, count, params or {})
        with self.db.session() as session:
            if parent_id is not None and session.get(Job, parent_id) is None:
                raise NotFound(f"no job with id {parent_id!r}")
            job = Job(
                id=str(ULID()),
                prompt=prompt,
                model_id=spec.id,
                params=full_params,
                seed=seed,
                count=count,
                status=JobStatus.queued.value,
                priority=priority,
                attempts=0,
                progress_done=0,
                progress_total=count * PROGRESS_SCALE,
                cancel_requested=False,
                parent_id=parent_id,
            )
            session.add(job)
            session.flush()
            return JobInfo.from_row(job)

    # ---- reading ----------------------------------------------------------------------

    def _find(self, session: Session, job_id: str) -> Job:
        job = session.get(Job, job_id)
        if job is not None:
            return job
        job_id = job_id.strip().upper()
        if len(job_id) >= 4:
            matches = session.scalars(select(Job).where(Job.id.startswith(job_id)).limit(2)).all()
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise UsageError(f"job id prefix {job_id!r} is ambiguous; give more characters")
        raise NotFound(f"no job with id {job_id!r}")

    def get(self, job_id: str) -> JobInfo:
        with self.db.session() as session:
            return JobInfo.from_row(self._find(session, job_id))

    def images(self, job_id: str) -> list[ImageInfo]:
        with self.db.session() as session:
            job = self._find(session, job_id)
            return [ImageInfo.from_row(img) for img in job.images]

    def reap_orphans(self) -> list[str]:
        """Fail in-process jobs whose process died (killed, power loss) on this host.

        Only ``local:`` runs are reaped: a job on a Celery worker is redelivered by the broker
        instead. Returns the ids of the jobs marked failed.
        """
        prefix = f"{LOCAL_PREFIX}{socket.gethostname()}:"
        reaped = []
        with self.db.session() as session:
            running = session.scalars(
                select(Job).where(Job.status == JobStatus.running.value, Job.worker_id.startswith(prefix))
            ).all()
            for job in running:
                pid = job.worker_id[len(prefix) :]
                if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                    self._finish(job, JobStatus.failed, f"interrupted: the process running it ({pid}) exited")
                    reaped.append(job.id)
        return reaped

    def list_jobs(self, limit: int = 20, status: str | None = None, model_id: str | None = None) -> list[JobInfo]:
        query = select(Job).order_by(Job.id.desc()).limit(limit)
        if status:
            query = query.where(Job.status == status)
        if model_id:
            query = query.where(Job.model_id == model_id)
        with self.db.session() as session:
            return [JobInfo.from_row(row) for row in session.scalars(query)]

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 0.2,
        on_update: Callable[[JobInfo], None] | None = None,
    ) -> JobInfo:
        """Block until the job is finished (or ``timeout`` seconds pass; then return it as it is)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job.finished or (deadline is not None and time.monotonic() >= deadline):
                return job
            time.sleep(poll)

    # ---- state changes ----------------------------------------------------------------

    def cancel(self, job_id: str) -> JobInfo:
        """A queued job is canceled at once; a running one stops at its next step."""
        with self.db.session() as session:
            job = self._find(session, job_id)
            if job.status == JobStatus.queued.value:
                job.status = JobStatus.canceled.value
                job.finished_at = utcnow()
                job.error = "canceled before it started"
            elif job.status == JobStatus.running.value:
                job.cancel_requested = True
            else:
                raise UsageError(f"job {job.id} has already {job.status}")
            session.flush()
            info = JobInfo.from_row(job)
        if info.finished:
            fire_job_finished(self.registry, info, [])
        return info

    def retry(self, job_id: str) -> JobInfo:
        """Put a failed or canceled job back in the queue with a fresh attempt budget."""
        with self.db.session() as session:
            job = self._find(session, job_id)
            if job.status not in (JobStatus.failed.value, JobStatus.canceled.value):
                raise UsageError(f"only failed or canceled jobs can be retried; job {job.id} is {job.status}")
            job.status = JobStatus.queued.value
            job.error = None
            job.attempts = 0
            job.cancel_requested = False
            job.progress_done = 0
            job.started_at = job.finished_at = None
            job.worker_id = None
            session.flush()
            return JobInfo.from_row(job)

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
                self._finish(job, JobStatus.canceled, "canceled")
                return None
            if job.attempts >= self.settings.max_attempts:
                self._finish(
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

    @staticmethod
    def _finish(job: Job, status: JobStatus, error: str | None) -> None:
        job.status = status.value
        job.error = error
        job.finished_at = utcnow()

    def run(
        self,
        job_id: str,
        *,
        worker_id: str | None = None,
        device: str | None = None,
        reclaim_running: bool = False,
        on_progress: ProgressHook | None = None,
    ) -> JobInfo:
        """Claim and execute one job to its end; returns the final snapshot.

        Raises nothing for a job that fails: the failure is recorded on the job.
        """
        worker_id = worker_id or default_worker_id()
        job = self.claim(job_id, worker_id, reclaim_running=reclaim_running)
        if job is None:
            return self.get(job_id)
        return self._execute(job, worker_id, device or self.settings.resolve_device(), on_progress)

    def _execute(self, job: JobInfo, worker_id: str, device: str, on_progress: ProgressHook | None) -> JobInfo:
        reporter = _ProgressReporter(self, job, on_progress)
        try:
            spec = self.registry.model(job.model_id)
            generator = self.cache.get(spec, device)
            description = generator.describe()
            results = []
            requests = [Request(job.prompt, job.seed + i, dict(job.params), index=i) for i in range(job.count)]
            for start in range(0, job.count, max(1, spec.max_batch)):
                batch = requests[start : start + spec.max_batch]
                reporter.batch(start, len(batch))
                batch_results = generator.generate(batch, reporter)
                if len(batch_results) != len(batch):
                    raise GenerationError(
                        f"model {spec.id!r} returned {len(batch_results)} images for {len(batch)} requests"
                    )
                results.extend(batch_results)
                reporter(1, 1)
            stored = self._store_files(job, spec, description, device, results)
        except JobCanceled:
            return self._end(job, worker_id, JobStatus.canceled, "canceled while running")
        except GenerationError as exc:
            return self._end(job, worker_id, JobStatus.failed, str(exc) or type(exc).__name__)
        except UnknownModel as exc:
            return self._end(job, worker_id, JobStatus.failed, str(exc))
        except KeyboardInterrupt:
            self._end(job, worker_id, JobStatus.canceled, "interrupted")
            raise
        except Exception as exc:  # noqa: BLE001 - any generator bug fails the job, not the worker
            log.debug("job %s failed", job.id, exc_info=True)
            return self._end(job, worker_id, JobStatus.failed, f"{type(exc).__name__}: {exc}")
        return self._end(job, worker_id, JobStatus.succeeded, None, stored)

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
                            id=str(ULID()),
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
            self._finish(row, status, error)
            session.flush()
            info = JobInfo.from_row(row)
            images = [ImageInfo.from_row(i) for i in row.images] if status is JobStatus.succeeded else []
        fire_job_finished(self.registry, info, images)
        return info

    # ---- workers: batches and abandoned jobs ------------------------------------------------

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
            return [self.get(job_id)]
        jobs = [lead] + self._claim_peers(lead, worker_id, max_jobs - 1)
        return self._execute_batch(jobs, worker_id, device or self.settings.resolve_device(), on_progress)

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

    def _execute_batch(
        self, jobs: list[JobInfo], worker_id: str, device: str, on_progress: ProgressHook | None
    ) -> list[JobInfo]:
        reporter = _BatchReporter(self, jobs, worker_id, on_progress)
        try:
            spec = self.registry.model(jobs[0].model_id)
            generator = self.cache.get(spec, device)
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
            raise
        except KeyboardInterrupt:
            self._end_all(jobs, reporter, worker_id, JobStatus.canceled, "interrupted")
            raise
        except Exception as exc:  # noqa: BLE001 - any generator bug fails the job, not the worker
            if len(reporter.live) > 1:
                # One bad request must not fail its peers: run each alone to find out whose it is.
                log.debug("batch of %d jobs failed; running them one by one", len(reporter.live), exc_info=True)
                alone = {job.id: self._execute_batch([job], worker_id, device, on_progress)[0] for job in reporter.live}
                return [alone.get(job.id) or self.get(job.id) for job in jobs]
            log.debug("job %s failed", jobs[0].id, exc_info=True)
            if isinstance(exc, (GenerationError, UnknownModel)):
                reason = str(exc) or type(exc).__name__
            else:
                reason = f"{type(exc).__name__}: {exc}"
            return self._end_all(jobs, reporter, worker_id, JobStatus.failed, reason)
        ended = {job.id: self._end(job, worker_id, JobStatus.succeeded, None, stored[job.id]) for job in reporter.live}
        return [ended.get(job.id) or self.get(job.id) for job in jobs]

    def _end_all(
        self, jobs: list[JobInfo], reporter: "_BatchReporter", worker_id: str, status: JobStatus, error: str
    ) -> list[JobInfo]:
        ended = {job.id: self._end(job, worker_id, status, error) for job in reporter.live}
        return [ended.get(job.id) or self.get(job.id) for job in jobs]

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

    def __init__(self, engine: Engine, job: JobInfo, hook: ProgressHook | None) -> None:
        self.engine = engine
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
        with self.engine.db.session() as session:
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

    def __init__(self, engine: Engine, jobs: list[JobInfo], worker_id: str, hook: ProgressHook | None) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.reporters = {job.id: _ProgressReporter(engine, job, hook) for job in jobs}
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
            self.engine._end(job, self.worker_id, JobStatus.canceled, "canceled while running")
