"""``studio worker`` and ``studio queue [reconcile|ping]``: the Celery executor's commands.

Celery, the database and the engine load inside the commands.
"""

from __future__ import annotations

from datetime import datetime, timezone

import click

from studio.cli.common import App, cli, console, pass_app, print_json, shown, status_style
from studio.errors import StudioError, UsageError

LOGLEVELS = ["debug", "info", "warning", "error"]


def require_broker(app: App) -> None:
    if not app.settings.broker_url:
        raise UsageError("no broker configured: set STUDIO_BROKER_URL (e.g. redis://127.0.0.1:6379/0)")


def parse_models(app: App, queues: str | None) -> tuple[str, ...]:
    """Model ids from ``--queues`` (``a,b`` or ``studio.a``); default: every model."""
    from studio.executors.celery import QUEUE_PREFIX

    known = sorted(app.engine.registry.models)
    if not queues:
        if not known:
            raise UsageError("no models installed: nothing to serve (see `studio plugins`)")
        return tuple(known)
    models = []
    for name in (q.strip() for q in queues.split(",")):
        model = name.removeprefix(QUEUE_PREFIX)
        if not model:
            continue
        if model not in known:
            raise UsageError(f"unknown model {model!r} in --queues (installed: {', '.join(known) or 'none'})")
        if model not in models:
            models.append(model)
    if not models:
        raise UsageError("--queues names no model")
    return tuple(models)


def check_device(device: str | None) -> str | None:
    if device is None:
        return None
    device = device.strip().lower()
    if device in ("cpu", "cuda", "auto") or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise UsageError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")


@cli.command()
@click.option("-Q", "--queues", metavar="MODELS", help="Comma-separated model ids to serve (default: every installed model).")
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Jobs run at once; one process each, each loading its models once.")
@click.option("--device", help="cpu, cuda or cuda:N (default: the STUDIO_DEVICE setting).")
@click.option("--batch", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Up to this many queued jobs with the same model and parameters share one generate() call.")
@click.option("--heartbeat", "heartbeat_s", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True,
              help="Seconds between heartbeats; a running job whose worker misses 3 is handed to another worker.")
@click.option("--reconcile", "reconcile_s", type=click.FloatRange(0.5, 86400), default=60.0, show_default=True,
              help="Seconds between checks for jobs the broker lost or whose worker died.")
@click.option("--loglevel", type=click.Choice(LOGLEVELS), default="info", show_default=True)
@pass_app
def worker(app: App, queues, concurrency, device, batch, heartbeat_s, reconcile_s, loglevel) -> None:
    """Run queued jobs: a Celery worker on the models' queues (needs STUDIO_BROKER_URL).

    SIGTERM or Ctrl-C stops it after the running jobs finish; a worker killed outright
    loses nothing, its jobs go to another worker.
    """
    require_broker(app)
    models = parse_models(app, queues)
    device = check_device(device)
    app.engine.db.dispose()  # migrated now, once; the pool processes open their own connections

    from studio.executors.worker import WorkerOptions, start_worker

    start_worker(
        app.settings,
        WorkerOptions(models=models, concurrency=concurrency, device=device, batch=batch,
                      heartbeat_s=heartbeat_s, reconcile_s=reconcile_s, loglevel=loglevel),
    )


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queue(ctx: click.Context, as_json) -> None:
    """The distributed queue: depth per model, running jobs, workers seen recently, failures."""
    if ctx.invoked_subcommand is not None:
        return
    app = ctx.ensure_object(App)
    require_broker(app)
    from studio.executors.celery import make_app
    from studio.executors.overview import gather

    overview = gather(make_app(app.settings), app.engine.db, app.engine.registry)
    if as_json:
        print_json(overview.as_dict())
        return
    show_overview(overview)


@queue.command(name="reconcile")
@pass_app
def queue_reconcile(app: App) -> None:
    """Re-enqueue queued jobs the broker lost and running jobs whose worker died."""
    require_broker(app)
    from studio.executors.celery import make_app
    from studio.executors.reconcile import reconcile

    done = reconcile(make_app(app.settings), app.engine.db)
    console.print(f"re-enqueued {len(done.lost)} lost and {len(done.orphaned)} orphaned jobs")


@queue.command(name="ping")
@pass_app
def queue_ping(app: App) -> None:
    """Exit 0 if a worker on this machine sent a heartbeat recently (for container healthchecks)."""
    import socket

    from studio.executors import liveness

    host = socket.gethostname()
    alive = [w for w in liveness.recent_workers(app.engine.db, within_s=600) if w.hostname == host and liveness.alive(w)]
    if not alive:
        raise StudioError(f"no worker on {host} sent a heartbeat recently")
    console.print(f"alive: {shown(', '.join(w.id for w in alive))}", soft_wrap=True)


def ago(when: datetime | None) -> str:
    if when is None:
        return ""
    seconds = (datetime.now(timezone.utc) - (when if when.tzinfo else when.replace(tzinfo=timezone.utc))).total_seconds()
    if seconds < 120:
        return f"{max(0, seconds):.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def show_overview(overview) -> None:
    from rich.table import Table

    if overview.broker_error:
        console.print(f"[yellow]broker unreachable:[/] {shown(overview.broker_error)}", soft_wrap=True)
    table = Table(title="queues")
    for column in ("queue", "in broker", "queued", "running"):
        table.add_column(column, justify="right" if column != "queue" else "left")
    for q in overview.queues:
        table.add_row(shown(q.queue), "?" if q.waiting is None else str(q.waiting), str(q.queued), str(q.running))
    console.print(table)

    table = Table(title="running jobs")
    for column in ("id", "model", "worker", "progress", "attempt", "started"):
        table.add_column(column, overflow="fold")
    for job in overview.running:
        table.add_row(shown(job.id), shown(job.model_id), shown(job.worker_id or ""), f"{job.fraction:.0%}", str(job.attempts), ago(job.started_at))
    console.print(table if overview.running else "no running jobs")

    table = Table(title="workers seen in the last 5 minutes")
    for column in ("worker", "queues", "device", "processes", "batch", "last seen", "state"):
        table.add_column(column, overflow="fold")
    for w in overview.workers:
        style = {"alive": "green", "late": "yellow"}.get(w.state, "magenta")
        table.add_row(shown(w.id), shown(",".join(w.queues)), shown(w.device), str(w.concurrency), str(w.batch), ago(w.last_seen), f"[{style}]{shown(w.state)}[/]")
    console.print(table if overview.workers else "no workers seen in the last 5 minutes")

    table = Table(title="failures in the last 24 hours")
    for column in ("id", "model", "finished", "error"):
        table.add_column(column, overflow="fold")
    for job in overview.failures:
        table.add_row(shown(job.id), shown(job.model_id), ago(job.finished_at),
                      f"[{status_style('failed')}]{shown(job.error or '')}[/]")
    console.print(table if overview.failures else "no failures in the last 24 hours")
