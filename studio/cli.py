"""The ``studio`` command line: parse, call the engine, print with rich. Nothing else.

Plugins add commands through the ``register_commands`` hook. torch is never imported on
the paths of ``--help``, ``jobs``, ``show``, ``models``, ``plugins`` and ``config``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from studio.config import ConfigError, Settings, load_settings
from studio.errors import StudioError, UsageError

console = Console()
err_console = Console(stderr=True)


class App:
    """Per-invocation state, created lazily so ``--help`` costs nothing."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._engine = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def engine(self):
        if self._engine is None:
            from studio.engine import Engine

            self._engine = Engine(self.settings)
        return self._engine


pass_app = click.make_pass_decorator(App, ensure=True)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def parse_params(items: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param takes key=value, got {item!r}")
        params[key.strip()] = value
    return params


def status_style(status: str) -> str:
    return {
        "queued": "yellow",
        "running": "cyan",
        "succeeded": "green",
        "failed": "red",
        "canceled": "magenta",
    }.get(status, "white")


def short_time(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


class CommandError(click.ClickException):
    """One red line on stderr and an exit code; how every expected failure ends."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        err_console.print(f"[red]error:[/] {self.format_message()}", highlight=False, soft_wrap=True)


class StudioGroup(click.Group):
    """Turns Studio's errors, in core and plugin commands alike, into :class:`CommandError`."""

    def invoke(self, ctx: click.Context):
        from sqlalchemy.exc import SQLAlchemyError

        from studio.db.session import DatabaseError
        from studio.store import StoreError

        try:
            return super().invoke(ctx)
        except StudioError as exc:
            raise CommandError(str(exc), exc.exit_code) from None
        except (ConfigError, DatabaseError, StoreError) as exc:
            raise CommandError(str(exc)) from None
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise CommandError(f"database error: {reason}") from None
        except KeyboardInterrupt:
            raise click.exceptions.Abort() from None


@click.group(cls=StudioGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="studio", prog_name="studio")
def cli() -> None:
    """Studio: text-to-image generation with pluggable models, a job queue and a gallery.

    Every image keeps its full recipe (prompt, model, weights, seed, parameters), so any of
    them can be made again exactly.
    """


# ---- jobs -------------------------------------------------------------------------------


@cli.command()
@click.argument("prompt")
@click.option("-m", "--model", "model_id", default="galip", show_default=True, help="Model id (see `studio models`).")
@click.option("-s", "--seed", type=int, help="Seed of the first image; image k uses seed+k. Random if omitted.")
@click.option("-n", "--count", type=int, default=1, show_default=True, help="Number of images.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Model parameter (repeatable).")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first on workers.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Also copy the images here.")
@click.option("--wait/--no-wait", default=None, help="With a broker: follow the job to its end (default: no).")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@pass_app
def submit(app: App, prompt, model_id, seed, count, params, priority, out_dir, wait, as_json) -> None:
    """Make images from PROMPT. Without a broker the job runs here and now."""
    engine = app.engine
    job = engine.submit(prompt, model_id, seed=seed, count=count, params=parse_params(params), priority=priority)
    from studio.executors import uses_broker

    if uses_broker(app.settings):
        from studio.executors.celery import enqueue

        enqueue(app.settings, job)
        if not wait:
            print_json(job.as_dict()) if as_json else console.print(f"queued [bold]{job.id}[/]")
            return
        job = follow(engine, job.id)
    else:
        from studio.executors.local import run_local

        job = run_local(engine, job, err_console, show_progress=not as_json)
    report_finished(engine, job, out_dir, as_json)


def follow(engine, job_id: str):
    """Wait for a job with a progress bar on the terminal."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    if not err_console.is_terminal:
        return engine.wait(job_id)
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(job_id, total=1.0)

        def update(job) -> None:
            bar.update(task, completed=job.fraction, description=f"{job.id} {job.status}")

        return engine.wait(job_id, on_update=update)


def report_finished(engine, job, out_dir: Path | None, as_json: bool) -> None:
    images = engine.images(job.id) if job.status == "succeeded" else []
    home = engine.settings.home
    copies = []
    if out_dir is not None and images:
        out_dir.mkdir(parents=True, exist_ok=True)
        for image in images:
            target = out_dir / f"{job.id}-{image.index}.png"
            shutil.copyfile(home / image.path, target)
            copies.append(str(target))
    if as_json:
        data = job.as_dict()
        data["images"] = [dict(i.as_dict(), file=str(home / i.path)) for i in images]
        if copies:
            data["copies"] = copies
        print_json(data)
    elif job.status == "succeeded":
        for image in images:
            console.print(str(home / image.path), soft_wrap=True)
        for copy in copies:
            console.print(f"copied to {copy}", soft_wrap=True)
        err_console.print(f"[green]job {job.id} succeeded[/] ({len(images)} image{'s' if len(images) != 1 else ''})")
    if job.status != "succeeded":
        raise StudioError(f"job {job.id} {job.status}: {job.error or 'no reason recorded'}")


@cli.command()
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed", "canceled"]))
@click.option("-m", "--model", "model_id", help="Only jobs of this model.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def jobs(app: App, limit, status, model_id, as_json) -> None:
    """Recent jobs, newest first, with status and progress."""
    app.engine.reap_orphans()
    rows = app.engine.list_jobs(limit=limit, status=status, model_id=model_id)
    if as_json:
        print_json([job.as_dict() for job in rows])
        return
    table = Table(title=None if rows else "no jobs yet")
    for column in ("id", "created", "model", "n", "status", "prompt"):
        table.add_column(column, overflow="fold" if column == "prompt" else "ellipsis", no_wrap=column != "prompt")
    for job in rows:
        style = status_style(job.status)
        status = job.status if job.status != "running" else f"running {job.fraction:.0%}"
        table.add_row(
            job.id,
            job.created_at.strftime("%m-%d %H:%M"),
            job.model_id,
            str(job.count),
            f"[{style}]{status}[/]",
            job.prompt,
        )
    console.print(table)


@cli.command()
@click.argument("job_id")
@click.option("--tree", is_flag=True, help="Show the lineage: what JOB_ID came from and what came from it.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, job_id, tree, as_json) -> None:
    """A job's details, its images and their recipes (or, with --tree, its lineage)."""
    engine = app.engine
    engine.reap_orphans()
    if tree:
        from studio.gallery.commands import print_tree

        print_tree(app, job_id, as_json)
        return
    job = engine.get(job_id)
    images = engine.images(job.id)
    home = engine.settings.home
    if as_json:
        data = job.as_dict()
        data["images"] = [dict(i.as_dict(), file=str(home / i.path)) for i in images]
        print_json(data)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    fields = [
        ("id", job.id),
        ("prompt", job.prompt),
        ("model", job.model_id),
        ("status", f"[{status_style(job.status)}]{job.status}[/]"),
        ("progress", f"{job.fraction:.0%}"),
        ("seed", f"{job.seed} (+0..{job.count - 1})" if job.count > 1 else str(job.seed)),
        ("params", json.dumps(job.params, sort_keys=True)),
        ("attempts", str(job.attempts)),
        ("created", short_time(job.created_at)),
        ("finished", short_time(job.finished_at)),
    ]
    if job.error:
        fields.append(("error", f"[red]{job.error}[/]"))
    if job.parent_id:
        fields.append(("parent", job.parent_id))
    if job.worker_id:
        fields.append(("worker", job.worker_id))
    for key, value in fields:
        table.add_row(key, value)
    console.print(table)
    for image in images:
        console.print(f"\n[bold]image {image.index}[/] seed {image.seed}  {image.width}x{image.height}  sha256 {image.sha256[:16]}")
        console.print(str(home / image.path), soft_wrap=True)
        console.print_json(json.dumps(image.recipe, sort_keys=True))


@cli.command()
@click.argument("job_id")
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 1).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def wait(app: App, job_id, timeout, as_json) -> None:
    """Wait until a job is finished; exit 1 unless it succeeded."""
    engine = app.engine
    engine.reap_orphans()
    job = engine.get(job_id)
    job = engine.wait(job.id, timeout=timeout) if (timeout is not None or as_json) else follow(engine, job.id)
    if not job.finished:
        raise StudioError(f"job {job.id} is still {job.status} after {timeout} s")
    report_finished(engine, job, None, as_json)


@cli.command()
@click.argument("job_id")
@pass_app
def cancel(app: App, job_id) -> None:
    """Cancel a job: a queued job never starts, a running one stops at its next step."""
    job = app.engine.cancel(job_id)
    if job.status == "canceled":
        console.print(f"job {job.id} canceled")
    else:
        console.print(f"job {job.id} will stop at its next step")


@cli.command()
@click.argument("job_id")
@pass_app
def retry(app: App, job_id) -> None:
    """Queue a failed or canceled job again (and run it here when there is no broker)."""
    from studio.executors import uses_broker

    engine = app.engine
    job = engine.retry(job_id)
    if uses_broker(app.settings):
        from studio.executors.celery import enqueue

        enqueue(app.settings, job)
        console.print(f"queued [bold]{job.id}[/] again")
        return
    from studio.executors.local import run_local

    report_finished(engine, run_local(engine, job, err_console), None, False)


# ---- models, plugins, settings -------------------------------------------------------------


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models(ctx: click.Context, as_json) -> None:
    """The models the installed plugins provide."""
    if ctx.invoked_subcommand is not None:
        return
    app = ctx.find_object(App) or ctx.ensure_object(App)
    from studio.loader import generators
    from studio.plugins import get_registry

    registry = get_registry(app.settings.load_plugins)
    loaded = {model_id for model_id, _device in generators.loaded()}
    specs = sorted(registry.models.values(), key=lambda s: s.id)
    if as_json:
        print_json(
            [
                {
                    "id": s.id,
                    "plugin": s.plugin,
                    "weights": s.weights,
                    "description": s.description,
                    "loaded": s.id in loaded,
                    "params": [
                        {"name": p.name, "type": p.type, "default": p.default, "min": p.min, "max": p.max,
                         "choices": list(p.choices) if p.choices is not None else None, "help": p.help}
                        for p in s.params
                    ],
                }
                for s in specs
            ]
        )
        return
    table = Table(title=None if specs else "no models installed (see `studio plugins`)")
    for column in ("id", "plugin", "weights", "loaded", "parameters"):
        table.add_column(column, overflow="fold")
    for s in specs:
        params = ", ".join(f"{p.name}={p.default}" for p in s.params)
        table.add_row(s.id, s.plugin, s.weights, "yes" if s.id in loaded else "no", params)
    console.print(table)


@models.group(name="import")
def models_import() -> None:
    """Import real weights from local files; each plugin adds its own subcommand."""


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_app
def plugins(app: App, as_json) -> None:
    """Installed plugins, what they register, and any that failed to load."""
    from studio.plugins import get_registry

    registry = get_registry(app.settings.load_plugins)
    infos = list(registry.plugins.values())
    if as_json:
        print_json([vars(info) for info in infos])
        return
    table = Table()
    for column in ("plugin", "version", "models", "datasets", "status"):
        table.add_column(column, overflow="fold")
    for info in infos:
        status = "[green]ok[/]" if info.ok else "[red]failed[/]"
        table.add_row(info.name, info.version or "", ", ".join(info.models), ", ".join(info.datasets), status)
    console.print(table)
    for info in infos:
        if not info.ok:
            console.print(f"[red]{info.name}[/] ({info.module}): {info.error}", highlight=False, soft_wrap=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_app
def config(app: App, as_json) -> None:
    """The effective settings and where each comes from."""
    from studio.db.session import redact

    settings = app.settings
    data = settings.as_dict()
    data["database_url"] = redact(settings.database_url)
    if data["broker_url"]:
        data["broker_url"] = redact(data["broker_url"])
    if as_json:
        print_json(data)
        return
    table = Table()
    table.add_column("setting")
    table.add_column("value", overflow="fold")
    table.add_column("from")
    for key, value in data.items():
        shown = "(local execution)" if key == "broker_url" and value is None else value
        if key == "load_plugins" and value is None:
            shown = "(all installed)"
        table.add_row(key, str(shown), settings.source.get(key, ""))
    console.print(table)


@cli.group()
def db() -> None:
    """Database schema: the CLI upgrades automatically; these are for operators."""


def migrate_to(app: App, direction: str, revision: str) -> None:
    """Run an Alembic upgrade or downgrade and say where the schema ended up."""
    from alembic.util import CommandError as AlembicError

    from studio.db import migrate
    from studio.db.session import open_database

    database = open_database(app.settings.database_url, upgrade=False)
    try:
        getattr(migrate, direction)(database, revision)
    except AlembicError as exc:
        raise UsageError(f"cannot {direction} to {revision!r}: {exc}") from None
    console.print(f"database at revision {migrate.current_revision(database) or 'base'}")


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_app
def db_upgrade(app: App, revision) -> None:
    """Upgrade the schema (default: to the newest revision)."""
    migrate_to(app, "upgrade", revision)


@db.command("downgrade")
@click.argument("revision")
@pass_app
def db_downgrade(app: App, revision) -> None:
    """Downgrade the schema to REVISION (``base`` drops every table: data is lost)."""
    migrate_to(app, "downgrade", revision)


@db.command("current")
@pass_app
def db_current(app: App) -> None:
    """Print the schema revision of the database and the newest one this version knows."""
    from studio.db import migrate
    from studio.db.session import open_database

    database = open_database(app.settings.database_url, upgrade=False)
    console.print(f"current: {migrate.current_revision(database) or 'empty'}  newest: {migrate.HEAD}")


# ---- gallery: browse, regen, vary, export, import (studio/gallery/commands.py) -------------

from studio.gallery.commands import register as register_gallery_commands  # noqa: E402

register_gallery_commands(cli)

from studio.executors.commands import register as register_executor_commands  # noqa: E402

register_executor_commands(cli)


# ---- entry point -----------------------------------------------------------------------------


def add_plugin_commands(group: click.Group) -> None:
    """Let every loaded plugin add its commands (a failure is shown by `studio plugins`)."""
    from studio.plugins import get_registry

    try:
        settings = load_settings()
    except ConfigError:
        return  # reported when a command needs the settings
    registry = get_registry(settings.load_plugins)
    registry.call_each("register_commands", lambda _name: {"cli": group})


class _OneLineFormatter(logging.Formatter):
    """Warnings on the terminal stay one line; tracebacks only with STUDIO_DEBUG=1."""

    def __init__(self, debug: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.debug = debug

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return super().formatException(ei) if self.debug else ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if self.debug else text.rstrip()


def setup_logging() -> None:
    debug = os.environ.get("STUDIO_DEBUG", "") not in ("", "0")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(debug))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    add_plugin_commands(cli)
    cli.main(args=argv, prog_name="studio")
