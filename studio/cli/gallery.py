"""``studio gallery``, ``regen``, ``vary``, ``export``, ``import`` and ``show --tree``.

The database, the engine and Textual load inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from studio.cli.common import (
    STATUS_CHOICES,
    App,
    check_local_device,
    cli,
    console,
    err_console,
    held_logs,
    parse_params,
    pass_app,
    print_json,
    report_finished,
    run_here,
    shown,
    status_style,
)
from studio.errors import StudioError, UsageError


def filter_options(func):
    """The filters shared by ``gallery`` and ``export``."""
    options = [
        click.option("-q", "--query", "text", default="", help="Words that must start words of the prompt."),
        click.option("-m", "--model", "model", help="Only this model."),
        click.option("--status", type=click.Choice(STATUS_CHOICES), help="Only jobs with this status."),
        click.option("--since", metavar="DATE", help="Made on or after DATE (YYYY-MM-DD, ISO time, or 7d)."),
        click.option("--until", metavar="DATE", help="Made before the end of DATE."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def make_filters(text, model, status, since, until):
    from studio.gallery.query import filters_from

    return filters_from(model=model, status=status, since=since, until=until, text=text)


def open_gallery(app: App):
    from studio.gallery.query import Gallery

    engine = app.engine
    engine.reap_orphans()
    return Gallery(engine.db, engine.settings.home)


# ---- gallery -----------------------------------------------------------------------------


@cli.command()
@filter_options
@click.option("--plain", is_flag=True, help="Print a table instead of the interactive browser.")
@click.option("--json", "as_json", is_flag=True, help="Print entries as JSON.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Entries to print (plain/JSON).")
@click.option("--after", metavar="KEY", help="Print the entries after this position (the `key` of an entry).")
@pass_app
def gallery(app: App, text, model, status, since, until, plain, as_json, limit, after) -> None:
    """Browse images: thumbnails, search, filters, detail, regenerate, vary, export, delete.

    On a terminal this opens the interactive browser; with --plain, --json or when the
    output is not a terminal it prints one page (use --after KEY to page on).
    """
    from studio.gallery.query import Key

    filters = make_filters(text, model, status, since, until)
    view = open_gallery(app)
    interactive = not (plain or as_json or after) and sys.stdin.isatty() and sys.stdout.isatty()
    if interactive:
        try:
            from studio.gallery.app import run_gallery
        except ModuleNotFoundError as exc:
            if exc.name != "textual":
                raise
            err_console.print("the interactive browser needs Textual (pip install 'studio[gallery]'); here is a table")
        else:
            with held_logs():  # a warning printed now would write over the browser's screen
                run_gallery(app.engine, view, filters)
            return
    page = view.page(filters, after=Key.parse(after) if after else None, limit=limit)
    states = {e.key: file_state(view.home, e) for e in page.entries}
    if as_json:
        print_json([dict(e.as_dict(view.home), file_state=states[e.key]) for e in page.entries])
        return
    print_table(page, filters, states)


def file_state(home: Path, entry) -> str | None:
    """``ok``, ``damaged`` or ``missing`` for an image's stored file; None for a job without images."""
    from studio import store

    return store.file_state(home, entry.path, entry.sha256) if entry.path else None


def print_table(page, filters, states=None) -> None:
    from rich import box
    from rich.table import Table

    states = states or {}
    title = None if page.entries else f"no images match: {shown(filters.describe())}"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("id", "model", "seed", "status"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    table.add_column("prompt", overflow="fold", min_width=12)
    for e in page.entries:
        style = status_style(e.status)
        status = f"[{style}]{shown(e.status)}[/]"
        state = states.get(e.key)
        if state not in (None, "ok"):
            status += f" [red]file {state}[/]"
        table.add_row(shown(e.id), shown(e.model_id), str(e.seed), status, shown(e.prompt))
    console.print(table)
    if page.has_after and page.last is not None:
        err_console.print(f"more: studio gallery --plain --after {shown(page.last)}", highlight=False, soft_wrap=True)


# ---- regen, vary -------------------------------------------------------------------------


def run_job(app: App, job, as_json: bool):
    """Start a new job: on the workers with a broker, else here (with a progress bar unless JSON)."""
    from studio.executors import dispatch

    return dispatch(app.engine, job, run_here(app.engine, show_progress=not as_json))


def report_job(app: App, job, as_json: bool) -> None:
    if job.status in ("queued", "running"):
        print_json(job.as_dict()) if as_json else console.print(f"queued [bold]{shown(job.id)}[/] (child of {shown(job.parent_id)})")
        return
    report_finished(app.engine, job, None, as_json)


@cli.command()
@click.argument("ident", metavar="ID")
@click.option("-s", "--seed", type=int, help="Another seed (default: the original one).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Change a model parameter.")
@click.option("--verify", is_flag=True,
              help="Re-run with everything identical and compare each image: the same sha256, or the same pixels "
                   "with only recorded diagnostics differing; otherwise say how they differ.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def regen(app: App, ident, seed, params, verify, as_json) -> None:
    """Make image or job ID again from its stored recipe, as a child of it."""
    from studio.gallery import actions

    src = actions.source(app.engine, ident)
    if verify:
        if seed is not None or params:
            raise UsageError("--verify re-runs the recipe unchanged; drop --seed and --param")
        from studio.executors.local import run_display

        with run_display(err_console, f"verify {src.label}", show=not as_json) as hooks:
            result = actions.verify(app.engine, src, **hooks)
        report_verification(app, result, as_json)
        return
    check_local_device(app)
    job = actions.regenerate(app.engine, src, seed=seed, params=parse_params(params))
    report_job(app, run_job(app, job, as_json), as_json)


def report_verification(app: App, result, as_json: bool) -> None:
    if as_json:
        print_json(result.as_dict())
    else:
        from rich.table import Table

        table = Table(title=shown(f"verify {result.source.label} on {result.device}: new job {result.job.id}"))
        for column in ("index", "seed", "original sha256", "new sha256", "", "stored file"):
            table.add_column(column)
        for check in result.checks:
            mark = "[green]match[/]" if check.match else "[red]differs[/]"
            if check.match and not check.exact:
                mark = "[green]same pixels[/]"
            elif check.match and check.expected != check.actual:
                mark += " (pixels and recipe; the original has the older PNG layout)"
            if check.repaired:
                stored = f"[yellow]was {check.file_before}, repaired[/]"
            else:
                stored = "[green]ok[/]" if check.file_after == "ok" else f"[red]{check.file_after}[/]"
            table.add_row(str(check.index), str(check.seed), check.expected[:16], (check.actual or "-")[:16], mark, stored)
        console.print(table)
        for check in result.checks:
            if check.comparison is not None:
                err_console.print(f"  image {check.index}: {shown(check.comparison.describe())}", highlight=False,
                                  soft_wrap=True)
        for note in result.differences:
            err_console.print(f"  changed since: {shown(note)}", highlight=False)
    if result.job.status != "succeeded":
        raise StudioError(f"job {result.job.id} {result.job.status}: {result.job.error or 'no reason recorded'}")
    differing = sum(not c.match for c in result.checks)
    if differing:
        broken = sum(c.file_after != "ok" for c in result.checks)
        also = f"; {broken} stored file{'s are' if broken != 1 else ' is'} damaged or missing" if broken else ""
        raise StudioError(f"{differing} of {len(result.checks)} images differ from the originals{also}")
    if not result.ok:
        broken = sum(c.file_after != "ok" for c in result.checks)
        raise StudioError(f"the recipe reproduces the original sha256, but {broken} stored file"
                          f"{'s are' if broken != 1 else ' is'} still damaged or missing")
    if not as_json:
        n = len(result.checks)
        repaired = sum(c.repaired for c in result.checks)
        note = (f"; {repaired} stored file{'s were' if repaired != 1 else ' was'} damaged or missing and "
                f"{'are' if repaired != 1 else 'is'} repaired from the regenerated bytes") if repaired else ""
        inexact = sum(not c.exact for c in result.checks)
        what = "the image matches" if n == 1 else f"all {n} images match"
        if inexact:
            what += (" (pixels bit for bit; " + ("the file differs" if n == 1 else f"{inexact} files differ")
                     + " only in recorded diagnostics or PNG encoding, see above)")
        else:
            what += " bit for bit"
        err_console.print(f"[green]{what}[/]{note}")


@cli.command()
@click.argument("ident", metavar="ID")
@click.option("-n", "--count", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("-s", "--seed", type=int, help="First seed of the variations (default: random).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def vary(app: App, ident, count, seed, as_json) -> None:
    """Variations of image or job ID: the same recipe with other seeds, as its child."""
    from studio.gallery import actions

    src = actions.source(app.engine, ident)
    check_local_device(app)
    job = actions.vary(app.engine, src, count, seed=seed)
    report_job(app, run_job(app, job, as_json), as_json)


# ---- lineage -----------------------------------------------------------------------------


def print_tree(app: App, ident: str, as_json: bool) -> None:
    """``studio show ID --tree``: the family of a job, the asked-for one highlighted."""
    from studio.gallery.lineage import lineage, rich_tree, unset_values_of

    family = lineage(app.engine.db, ident, unset_values_of(app.engine.registry))
    if as_json:
        print_json(family.as_dict())
        return

    def label(node, parent) -> str:
        style = status_style(node.status)
        prompt = node.prompt if len(node.prompt) <= 50 else node.prompt[:49] + "…"
        changes = node.changes_from(parent)
        text = f"{shown(node.job_id)} [{style}]{shown(node.status)}[/] x{node.count} seed {node.seed}  {shown(prompt)}"
        if changes:
            text += f"  [dim]({shown(', '.join(changes))})[/]"
        return f"[reverse]{text}[/]" if node.job_id == family.focus else text

    console.print(rich_tree(family, label))
    if family.truncated:
        err_console.print("(the family is larger; the rest is left out)")


# ---- check ------------------------------------------------------------------------------


@cli.command(name="check")
@click.option("--repair", is_flag=True,
              help="Remake damaged or missing files from their recipes (only when the bytes match) "
                   "and remove files no image uses.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def check_command(app: App, repair, as_json) -> None:
    """Check every stored file: its bytes hash to its name, no row lacks its file, no file lacks a row.

    Exit 0 when the store is sound (after --repair: when everything could be mended), else 1.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from studio.gallery.integrity import check_store

    engine = app.engine
    engine.reap_orphans()
    if err_console.is_terminal and not as_json:
        with Progress(TextColumn("checking files"), BarColumn(), MofNCompleteColumn(), console=err_console,
                      transient=True) as bar:
            task = bar.add_task("check", total=None)
            report = check_store(engine, repair=repair,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        report = check_store(engine, repair=repair)
    if as_json:
        print_json(report.as_dict())
    else:
        from rich.table import Table

        if report.problems:
            table = Table(title="problems found")
            for column in ("kind", "file", "images", ""):
                table.add_column(column, overflow="fold")
            for p in report.problems:
                mark = f"[green]{shown(p.note)}[/]" if p.repaired else f"[red]{shown(p.note or 'left')}[/]"
                table.add_row(p.kind, shown(p.path), shown(", ".join(p.image_ids)), mark)
            console.print(table)
        console.print(f"{report.rows} image rows, {report.files} files checked; "
                      f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''} found"
                      + (f", {len(report.problems) - len(report.left)} repaired" if repair else ""))
    if not report.ok:
        kinds: dict[str, int] = {}
        for p in report.left:
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        hint = "" if repair else "; `studio check --repair` mends what it can"
        raise StudioError(f"the store has problems: {what}{hint}")


# ---- export, import ----------------------------------------------------------------------


@cli.command(name="export")
@click.argument("idents", nargs=-1, metavar="[ID]...")
@filter_options
@click.option("--all", "everything", is_flag=True, help="Export every image.")
@click.option("--to", "target", required=True, type=click.Path(path_type=Path), help="A folder, or a file ending in .zip.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def export_command(app: App, idents, text, model, status, since, until, everything, target, as_json) -> None:
    """Copy images (IDs, or those matching the filters) with their recipes and a manifest."""
    from studio.gallery.transfer import export

    filters = make_filters(text, model, status, since, until)
    if idents and (filters.active or everything):
        raise UsageError("give image/job ids or filters, not both")
    if not idents and not (filters.active or everything):
        raise UsageError("nothing selected: give image/job ids, a filter (--query, --model, ...), or --all")
    view = open_gallery(app)
    if idents:
        entries = [e for ident in idents for e in view.entries_of(ident)]
    else:
        entries = view.iter_entries(filters)
    done = export(app.engine, entries, target)
    if as_json:
        print_json(done.as_dict())
    else:
        console.print(f"exported {done.images} image{'s' if done.images != 1 else ''} to {shown(done.target)}", soft_wrap=True)


@cli.command(name="import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@pass_app
def import_command(app: App, paths, as_json) -> None:
    """Add PNGs with a Studio recipe, export folders or export zips to the gallery."""
    from studio.gallery.transfer import import_paths

    done = import_paths(app.engine, paths)
    if as_json:
        print_json(done.as_dict())
        return
    console.print(
        f"imported {done.images} image{'s' if done.images != 1 else ''} in {done.jobs} job{'s' if done.jobs != 1 else ''}"
        + (f"; {done.duplicates} already in the gallery" if done.duplicates else "")
    )
