"""The client side of jobs: validate, submit, list, wait, cancel, retry; the job state machine.

    queued -> running -> succeeded | failed | canceled
    queued -> canceled            (never started)
    failed | canceled -> queued   (retry)

The worker side (claim, run, store files, leases) is :mod:`studio.runner`; an Engine hands
its calls there (:attr:`Engine.runner`), so a caller holding an Engine can also run jobs in
this process. The records it returns (:class:`JobInfo`, :class:`ImageInfo`) live in
:mod:`studio.records`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import random
import socket
import time
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from studio.config import Settings
from studio.db import Database, Image, Job, JobStatus, open_database
from studio.db.models import utcnow
from studio.errors import NotFound, UsageError
from studio.generators import ParamError
from studio.loader import GeneratorCache, generators
from studio.plugins import Registry, UnknownModel, fire_job_finished, get_registry
from studio.plumbing import new_id
from studio.records import ImageInfo, JobInfo, status_phrase

if TYPE_CHECKING:
    from studio.runner import Runner

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 2000
MAX_COUNT = 256
MAX_SEED = 2**63 - 1
MAX_PRIORITY = 2**31 - 1  # the column is a 32-bit INTEGER on PostgreSQL
MAX_TEXT_PARAM_CHARS = 2000
PROGRESS_INTERVAL_S = 0.25  # how often progress is written and cancellation checked
PROGRESS_SCALE = 1000  # progress_total = count * PROGRESS_SCALE
#: Errors that mean "the database is unreachable right now", not "the job is bad".
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)


ProgressHook = Callable[[JobInfo, float], None]
#: Told what a run is doing between progress steps: ``"loading model weights"``, ``"generating"``.
StatusHook = Callable[[str], None]


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


def check_text(value: Any, what: str) -> str:
    """Text that can be stored and shown: valid UTF-8 (no lone surrogates: undecodable bytes from
    argv or a file) and no NUL character. UsageError (exit 2) otherwise."""
    from studio.plumbing import visible

    if not isinstance(value, str):
        raise UsageError(f"{what} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"{what} is not valid UTF-8 (undecodable bytes at character {exc.start + 1}: "
                         f"{visible(value[exc.start:exc.end])})") from None
    if "\x00" in value:
        raise UsageError(f"{what} holds a NUL character (at character {value.index(chr(0)) + 1})")
    return value


def check_prompt(prompt: Any) -> str:
    """The rules every prompt follows, typed or imported: text, not empty, at most
    :data:`MAX_PROMPT_CHARS` characters, valid UTF-8, no NUL. Returns it stripped."""
    if prompt is None:
        prompt = ""
    prompt = check_text(prompt, "the prompt").strip()
    if not prompt:
        raise UsageError("the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UsageError(f"the prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}")
    return prompt


def _local_owner_gone(worker_id: str | None) -> bool:
    """Whether ``worker_id`` names an in-process run on this host whose process has exited."""
    prefix = f"{LOCAL_PREFIX}{socket.gethostname()}:"
    if not worker_id or not worker_id.startswith(prefix):
        return False
    pid = worker_id[len(prefix):]
    return pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))


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
        self._runner: "Runner | None" = None

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
        prompt = check_prompt(prompt)
        check_text(model_id, "the model id")
        try:
            spec = self.registry.model(model_id)
        except UnknownModel as exc:
            raise UsageError(str(exc)) from None
        if not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise UsageError(f"count must be between 1 and {MAX_COUNT}, got {count}")
        if seed is None:
            seed = random.randrange(0, 2**32)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0 or seed + count - 1 > MAX_SEED:
            raise UsageError(f"seed must be between 0 and {MAX_SEED - count + 1}, got {seed}")
        full_params = self.check_params(spec, params)
        for p in spec.params:
            if p.type == "image" and full_params.get(p.name):
                from studio.inputs import InputError, store_input

                try:
                    full_params[p.name] = store_input(self.settings, full_params[p.name])
                except InputError as exc:
                    raise UsageError(f"parameter {p.name!r}: {exc}") from None
        return spec, prompt, seed, full_params

    def check_params(self, spec, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` checked against the model's schema (text valid, within limits); the full set with defaults."""
        if not isinstance(params, dict):
            raise UsageError("the parameters must be an object of names and values")
        for key, value in params.items():
            check_text(key, "a parameter name")
            if isinstance(value, str):
                check_text(value, f"parameter {key!r}")
                if len(value) > MAX_TEXT_PARAM_CHARS:
                    raise UsageError(f"parameter {key!r} is {len(value)} characters long; the limit is {MAX_TEXT_PARAM_CHARS}")
        try:
            return spec.validate_params(params)
        except ParamError as exc:
            raise UsageError(str(exc)) from None

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
        if not isinstance(priority, int) or not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise UsageError(f"priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY}, got {priority}")
        spec, prompt, seed, full_params = self.validate(prompt, model_id, seed, count, params or {})
        with self.db.session() as session:
            if parent_id is not None and session.get(Job, parent_id) is None:
                raise NotFound(f"no job with id {parent_id!r}")
            job = Job(
                id=new_id(),
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

    def _find(self, session: Session, ident: str) -> Job:
        """The job a job id, an image id, or a unique prefix of either names."""
        return locate(session, ident)[0]

    def lookup(self, ident: str) -> tuple[JobInfo, ImageInfo | None]:
        """(the job, the image or None) that a job or image id, or a unique prefix of one, names."""
        with self.db.session() as session:
            job, image = locate(session, ident)
            return JobInfo.from_row(job), ImageInfo.from_row(image) if image is not None else None

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
                    finish_row(job, JobStatus.failed, f"interrupted: the process running it ({pid}) exited")
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
            elif job.status == JobStatus.running.value and _local_owner_gone(job.worker_id):
                finish_row(job, JobStatus.canceled, "canceled (the process running it had exited)")
            elif job.status == JobStatus.running.value:
                job.cancel_requested = True
            else:
                raise UsageError(f"job {job.id} {status_phrase(job.status, already=True)}")
            session.flush()
            info = JobInfo.from_row(job)
        if info.finished:
            fire_job_finished(self.registry, info, [])
        return info

    def retry(self, job_id: str) -> JobInfo:
        """Put a failed or canceled job back in the queue with a fresh attempt budget."""
        self.reap_orphans()  # a job whose process died is failed first, so it can be retried
        with self.db.session() as session:
            job = self._find(session, job_id)
            if job.status not in (JobStatus.failed.value, JobStatus.canceled.value):
                raise UsageError(f"only failed or canceled jobs can be retried; job {job.id} {status_phrase(job.status)}")
            job.status = JobStatus.queued.value
            job.error = None
            job.attempts = 0
            job.cancel_requested = False
            job.progress_done = 0
            job.started_at = job.finished_at = None
            job.worker_id = None
            session.flush()
            return JobInfo.from_row(job)

    # ---- the worker side, for callers that hold an Engine (see studio.runner) ------------------

    @property
    def runner(self) -> "Runner":
        if self._runner is None:
            from studio.runner import Runner

            self._runner = Runner(self)
        return self._runner

    def run(self, job_id: str, **options: Any) -> JobInfo:
        """Claim and run one job to its end here (:meth:`studio.runner.Runner.run`)."""
        return self.runner.run(job_id, **options)

    def run_batch(self, job_id: str, **options: Any) -> list[JobInfo]:
        """Run a job with queued peers in one ``generate()`` call (:meth:`studio.runner.Runner.run_batch`)."""
        return self.runner.run_batch(job_id, **options)

    def claim(self, job_id: str, worker_id: str, **options: Any) -> JobInfo | None:
        return self.runner.claim(job_id, worker_id, **options)

    def release_abandoned(self, worker_id: str) -> list[JobInfo]:
        return self.runner.release_abandoned(worker_id)

    def renew_lease(self, worker_id: str) -> int:
        return self.runner.renew_lease(worker_id)


MIN_PREFIX = 4  # the shortest id prefix looked up


def locate(session: Session, ident: str) -> tuple[Job, Image | None]:
    """Resolve a job id or an image id, or a unique prefix of either: (job, image or None).

    A prefix is only a prefix: ``%`` and ``_`` in it are matched literally, never as wildcards.
    """
    ident = (ident or "").strip().upper()
    if not ident:
        raise UsageError("an image or job id is empty")
    job = session.get(Job, ident)
    if job is not None:
        return job, None
    image = session.get(Image, ident)
    if image is not None:
        return image.job, image
    if len(ident) >= MIN_PREFIX:
        jobs = session.scalars(select(Job).where(Job.id.startswith(ident, autoescape=True)).limit(2)).all()
        images = session.scalars(select(Image).where(Image.id.startswith(ident, autoescape=True)).limit(2)).all()
        if len(images) + len(jobs) == 1:
            return (images[0].job, images[0]) if images else (jobs[0], None)
        if images or jobs:
            raise UsageError(f"id prefix {ident!r} is ambiguous (it starts several job or image ids); give more characters")
    raise NotFound(f"no job or image with id {ident!r}")


def finish_row(job: Job, status: JobStatus, error: str | None) -> None:
    """Mark a job row finished (in the caller's transaction)."""
    job.status = status.value
    job.error = error
    job.finished_at = utcnow()
