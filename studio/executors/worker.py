"""``studio worker``: a real Celery worker on the models' queues, plus Studio's housekeeping.

The housekeeping is a Celery bootstep in the worker's main process, driven by the worker's
own timer (no extra threads, nothing shared with the forked pool processes): every
heartbeat it refreshes the worker's row in the database, and every ``reconcile_s`` it
re-enqueues jobs the broker lost or whose worker died (one worker at a time). It also
reconciles once at start, so restarting workers after a Redis flush loses nothing.
"""

from __future__ import annotations

import logging
import secrets
import socket
from dataclasses import dataclass

from celery import bootsteps
from celery.signals import worker_process_init

from studio.db import open_database
from studio.executors import liveness, reconcile
from studio.executors.celery import WorkerContext, make_app, queue_name
from studio.plumbing import one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    models: tuple[str, ...]
    concurrency: int = 1
    device: str | None = None
    batch: int = 1
    heartbeat_s: float = liveness.DEFAULT_HEARTBEAT_S
    reconcile_s: float = 60.0
    loglevel: str = "info"

    def node_name(self) -> str:
        """Unique per start, so a restarted worker never looks like the one that died."""
        label = "+".join(self.models)[:60]
        return f"{label}.{secrets.token_hex(3)}@{socket.gethostname()}"


class Housekeeping(bootsteps.StartStopStep):
    """Heartbeat and reconciliation in the worker's main process."""

    requires = {"celery.worker.components:Timer", "celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.timer_refs: list = []
        self.db = None

    def start(self, worker) -> None:
        context: WorkerContext = worker.app.studio
        self.db = open_database(context.settings.database_url)
        # Pool processes forked later must not use this process's connections.
        worker_process_init.connect(self._forget_connections, weak=False)
        self._beat(worker)
        self._reconcile(worker, locked=False)
        self.timer_refs = [
            worker.timer.call_repeatedly(context.heartbeat_s, self._beat, (worker,), priority=10),
            worker.timer.call_repeatedly(context.reconcile_s, self._reconcile, (worker, True), priority=10),
        ]

    def stop(self, worker) -> None:
        for ref in self.timer_refs:
            ref.cancel()
        self.timer_refs = []
        if self.db is not None:
            self._beat(worker, stopped=True)

    def _forget_connections(self, **_kwargs) -> None:
        if self.db is not None:
            self.db.engine.dispose(close=False)

    def _beat(self, worker, stopped: bool = False) -> None:
        context: WorkerContext = worker.app.studio
        try:
            liveness.beat(
                self.db,
                worker.hostname,
                queues=sorted(worker.app.amqp.queues.consume_from),
                device=context.device or context.settings.device,
                concurrency=worker.concurrency,
                batch=context.batch,
                heartbeat_s=context.heartbeat_s,
                processes=list(worker.pool.info.get("processes", [])) if worker.pool else [],
                stopped=stopped,
            )
        except Exception as exc:  # noqa: BLE001 - the database may be briefly away; next beat retries
            log.warning("heartbeat failed: %s", one_line(exc))

    def _reconcile(self, worker, locked: bool) -> None:
        context: WorkerContext = worker.app.studio
        try:
            if locked:
                done = reconcile.try_reconcile(worker.app, self.db, worker.hostname, context.reconcile_s * 0.9)
            else:
                done = reconcile.reconcile(worker.app, self.db)
            if done is not None:
                liveness.forget_workers(self.db)
        except Exception as exc:  # noqa: BLE001 - retried at the next interval
            log.warning("reconcile failed: %s", one_line(exc))
            return
        if done is not None and done.total:
            log.warning("re-enqueued %d lost and %d orphaned jobs", len(done.lost), len(done.orphaned))


def start_worker(settings, options: WorkerOptions) -> None:
    """Run a Celery worker in this process until it is stopped (SIGTERM: finish the jobs first)."""
    context = WorkerContext(
        settings=settings,
        device=options.device,
        batch=options.batch,
        heartbeat_s=options.heartbeat_s,
        reconcile_s=options.reconcile_s,
    )
    app = make_app(settings, context)
    app.steps["worker"].add(Housekeeping)
    app.worker_main(
        [
            "worker",
            f"--hostname={options.node_name()}",
            f"--queues={','.join(queue_name(m) for m in options.models)}",
            f"--concurrency={options.concurrency}",
            "--pool=prefork",
            f"--loglevel={options.loglevel}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
