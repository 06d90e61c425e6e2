"""``studio submit``, ``jobs``, ``show``, ``wait``, ``cancel``, ``retry``: the life of a job."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from studio.cli.common import (
    STATUS_CHOICES,
    App,
    check_local_device,
    check_out_dir,
    cli,
    console,
    err_console,
    find_job,
    follow,
    parse_params,
    pass_app,
    print_json,
    report_finished,
    run_here,
    short_time,
    shown,
    shown_json,
    status_style,
)
from studio.errors import StudioError


@contextmanager
def stops_interrupt(local: bool):
    """While a local submit stores and starts its job, SIGTERM and SIGHUP stop it as Ctrl-C does
    (the run itself installs the same while it runs), so the job never stays queued.

    The interrupt can land inside a garbage-collection callback, where Python only reports it
    and goes on (the job then simply runs to its end); such a report is kept off the terminal.
    """
    if not local:
        yield
        return
    from studio.executors.local import stop_signals_interrupt

    previous = sys.unraisablehook

    def quiet(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)

    sys.unraisablehook = quiet
    try:
        with stop_signals_interrupt():
            yield
    finally:
        sys.unraisablehook = previous


@cli.command()
@click.argument("prompt")
@click.option("-m", "--model", "model_id", help="Model id (see `studio models`) [default: the default_model setting].")
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
    from studio.executors import dispatch, uses_broker

    engine = app.engine
    check_out_dir(out_dir)
    check_local_device(app)
    if model_id is None:  # `-m ""` is an (unknown) model id, not "the default"
        model_id = engine.registry.default_model(app.settings.default_model).id
    local = not uses_broker(app.settings)
    with stops_interrupt(local):
        job = engine.submit(prompt, model_id, seed=seed, count=count, params=parse_params(params), priority=priority)
        try:
            warn_unknown_words(engine.registry.models.get(job.model_id), job.prompt)
            job = dispatch(engine, job, run_here(engine, show_progress=not as_json))
        except KeyboardInterrupt:
            # stopped before the run began (between storing the job and claiming it): a queued
            # local job would never start, so end it canceled; a running one ends itself
            if local and engine.get(job.id).status == "queued":
                engine.cancel(job.id)
            raise
    if uses_broker(app.settings):
        if not wait:
            print_json(job.as_dict()) if as_json else console.print(f"queued [bold]{shown(job.id)}[/]")
            return
        job = follow(engine, job.id)
    report_finished(engine, job, out_dir, as_json)


def warn_unknown_words(spec, prompt: str) -> None:
    """One line when the prompt has words the model was never trained on; the job still runs."""
    unknown = spec.unknown_words(prompt) if spec is not None else []
    if unknown:
        draws = spec.draws or "only the words it was trained on (see `studio models show " + spec.id + "`)"
        err_console.print(f"the {spec.id} model draws {draws}; unknown words: {', '.join(unknown)}",
                          style="yellow", markup=False, highlight=False, soft_wrap=True)


@cli.command()
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--status", type=click.Choice(STATUS_CHOICES))
@click.option("-m", "--model", "model_id", help="Only jobs of this model.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def jobs(app: App, limit, status, model_id, as_json) -> None:
    """Recent jobs, newest first, with status and progress (ids shortened to a prefix any command takes)."""
    from rich.table import Table

    if app.settings.database_missing():
        rows = []  # a fresh home: no database yet, so no jobs (and no need to load the database layer)
    else:
        app.engine.reap_orphans()
        rows = app.engine.list_jobs(limit=limit, status=status, model_id=model_id)
    if as_json:
        print_json([job.as_dict() for job in rows])
        return
    from rich import box

    from studio.records import short_id

    table = Table(title=None if rows else "no jobs yet", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("id", "created", "model", "n", "status"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    table.add_column("prompt", overflow="fold", min_width=20, ratio=1)
    for job in rows:
        style = status_style(job.status)
        status = job.status if job.status != "running" else f"running {job.fraction:.0%}"
        table.add_row(
            shown(short_id(job.id)),
            job.created_at.strftime("%m-%d %H:%M"),
            shown(job.model_id),
            str(job.count),
            f"[{style}]{shown(status)}[/]",
            shown(job.prompt),
        )
    console.print(table)


@cli.command()
@click.argument("ident", metavar="ID")
@click.option("--tree", is_flag=True, help="Show the lineage: what ID came from and what came from it.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, ident, tree, as_json) -> None:
    """A job (ID: a job or an image id), its images and their recipe (or, with --tree, its lineage)."""
    from rich.table import Table

    engine = app.engine
    engine.reap_orphans()
    if tree:
        from studio.cli.gallery import print_tree

        print_tree(app, ident, as_json)
        return
    job, image = find_job(engine, ident, quiet=as_json)
    images = [image] if image is not None else engine.images(job.id)
    home = engine.settings.home
    from studio import store

    states = [store.file_state(home, i.path, i.sha256) for i in images]
    if as_json:
        data = job.as_dict()
        data["images"] = [dict(i.as_dict(), file=str(home / i.path), file_state=state) for i, state in zip(images, states)]
        if image is not None:
            data["found"] = {"image": image.id}
        print_json(data)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    fields = [
        ("id", shown(job.id)),
        ("prompt", shown(job.prompt)),
        ("model", shown(job.model_id)),
        ("status", f"[{status_style(job.status)}]{shown(job.status)}[/]"),
        ("progress", f"{job.fraction:.0%}"),
        ("seed", f"{job.seed} (+0..{job.count - 1})" if job.count > 1 else str(job.seed)),
        ("params", shown(json.dumps(job.params, sort_keys=True, ensure_ascii=False))),
        ("attempts", str(job.attempts)),
        ("created", short_time(job.created_at)),
        ("finished", short_time(job.finished_at)),
    ]
    if job.error:
        fields.append(("error", f"[red]{shown(job.error)}[/]"))
    if job.parent_id:
        fields.append(("parent", shown(job.parent_id)))
    if job.worker_id:
        fields.append(("worker", shown(job.worker_id)))
    for key, value in fields:
        table.add_row(key, value)
    console.print(table)
    if not images:
        return
    console.print()
    files = Table(box=None, pad_edge=False)
    for column in ("image", "id", "seed", "size", "sha256", "stored"):
        files.add_column(column, no_wrap=True)
    files.add_column("file", overflow="fold")
    for i, state in zip(images, states):
        stored = "[green]ok[/]" if state == store.OK else f"[red]{state}[/]"
        files.add_row(str(i.index), shown(i.id), str(i.seed), f"{i.width}x{i.height}", shown(i.sha256[:16]), stored,
                      shown(home / i.path))
    console.print(files)
    for i, state in zip(images, states):
        if state != store.OK:
            console.print(f"[red]image {i.index}: the stored file is {state}[/]"
                          + (" (its bytes do not hash to its name)" if state == store.DAMAGED else "")
                          + "; `studio check --repair` remakes it from the recipe", soft_wrap=True)
    shared, own = split_recipes([i.recipe for i in images])
    title = "recipe" if len(images) == 1 else f"recipe (the same for all {len(images)} images but the seed)"
    console.print(f"\n[bold]{title}[/]")
    console.print(shown_json(shared), soft_wrap=True)
    for i, rest in zip(images, own):
        if rest:
            console.print(f"[bold]image {i.index} also[/] {shown(json.dumps(rest, sort_keys=True))}", soft_wrap=True)


def split_recipes(recipes: list[dict]) -> tuple[dict, list[dict]]:
    """(what every recipe has in common, what each has of its own); the seed counts as its own
    when the images have different seeds, and is then left out of both (the table shows it)."""
    if not recipes:
        return {}, []
    first = recipes[0]
    shared = {k: v for k, v in first.items() if all(k in r and r[k] == v for r in recipes[1:])}
    own = [{k: v for k, v in r.items() if k not in shared and k != "seed"} for r in recipes]
    return shared, own


@cli.command()
@click.argument("ident", metavar="ID")
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 1).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def wait(app: App, ident, timeout, as_json) -> None:
    """Wait until a job (ID: a job or an image id) is finished; exit 1 unless it succeeded."""
    engine = app.engine
    engine.reap_orphans()
    job, _image = find_job(engine, ident, quiet=as_json)
    job = engine.wait(job.id, timeout=timeout) if (timeout is not None or as_json) else follow(engine, job.id)
    if not job.finished:
        raise StudioError(f"job {job.id} is still {job.status} after {timeout} s")
    report_finished(engine, job, None, as_json)


@cli.command()
@click.argument("ident", metavar="ID")
@pass_app
def cancel(app: App, ident) -> None:
    """Cancel a job (ID: a job or an image id): a queued job never starts, a running one stops at its next step."""
    job, _image = find_job(app.engine, ident)
    job = app.engine.cancel(job.id)
    if job.status == "canceled":
        console.print(f"job {shown(job.id)} canceled")
    else:
        console.print(f"job {shown(job.id)} will stop at its next step")


@cli.command()
@click.argument("ident", metavar="ID")
@pass_app
def retry(app: App, ident) -> None:
    """Queue a failed or canceled job (ID: a job or an image id) again; without a broker it runs here."""
    from studio.executors import dispatch, uses_broker

    engine = app.engine
    job, _image = find_job(engine, ident)
    check_local_device(app)
    job = dispatch(engine, engine.retry(job.id), run_here(engine))
    if uses_broker(app.settings):
        console.print(f"queued [bold]{shown(job.id)}[/] again")
        return
    report_finished(engine, job, None, False)
