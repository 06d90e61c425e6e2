"""``studio models`` (and ``models import``), ``plugins``, ``config``: what is installed and how it is set.

None of these touches the database: they import no SQLAlchemy and no torch.
"""

from __future__ import annotations

import click

from studio.cli.common import App, cli, console, err_console, pass_app, print_json, shown


def param_range(p) -> str:
    """A parameter's allowed values, as a person reads them: "0..1", ">= 1", "a, b, c"."""
    if p.choices is not None:
        return ", ".join('""' if c == "" else str(c) for c in p.choices)

    def num(value) -> str:
        return str(int(value)) if p.type == "int" else f"{value:g}"

    low = p.min
    high = p.max if p.max is None or abs(p.max) < 2**53 else None  # a seed-sized bound is no bound to a reader
    if low is not None and high is not None:
        return f"{num(low)}..{num(high)}"
    if low is not None:
        return f">= {num(low)}"
    if high is not None:
        return f"<= {num(high)}"
    return ""


def spec_dict(s, loaded: set[str]) -> dict:
    return {
        "id": s.id,
        "plugin": s.plugin,
        "weights": s.weights,
        "description": s.description,
        "draws": s.draws,
        "licence": s.licence,
        "vocabulary": list(s.vocabulary) if s.vocabulary is not None else None,
        "card": s.card,
        "loaded": s.id in loaded,
        "params": [
            {"name": p.name, "type": p.type, "default": p.default, "min": p.min, "max": p.max,
             "choices": list(p.choices) if p.choices is not None else None, "help": p.help}
            for p in s.params
        ],
    }


def _registry(app: App):
    from studio.plugins import get_registry

    return get_registry(app.settings.load_plugins)


def _loaded() -> set[str]:
    from studio.loader import generators

    return {model_id for model_id, _device in generators.loaded()}


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Everything about every model, as JSON.")
@click.pass_context
def models(ctx: click.Context, as_json) -> None:
    """The models the installed plugins provide (`studio models show ID`: everything about one)."""
    from rich import box
    from rich.table import Table

    if ctx.invoked_subcommand is not None:
        return
    app = ctx.find_object(App) or ctx.ensure_object(App)
    registry = _registry(app)
    loaded = _loaded()
    specs = sorted(registry.models.values(), key=lambda s: s.id)
    if as_json:
        print_json([spec_dict(s, loaded) for s in specs])
        return
    table = Table(title=None if specs else "no models installed (see `studio plugins`)", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for column in ("id", "plugin", "draws", "params"):
        table.add_column(column, no_wrap=column in ("id", "plugin"), overflow="fold")
    table.add_column("about", overflow="fold", ratio=1)
    for s in specs:
        draws = s.draws or ("any words" if s.vocabulary is None else f"{len(s.vocabulary)} words")
        table.add_row(shown(s.id), shown(s.plugin), shown(draws), str(len(s.params)), shown(s.description))
    console.print(table)
    if specs:
        err_console.print("`studio models show ID`: parameters, vocabulary, card figures, weights and licence",
                          highlight=False, markup=False)


@models.command(name="show")
@click.argument("model_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def models_show(app: App, model_id, as_json) -> None:
    """Everything about model ID: parameters with ranges and help, vocabulary, card figures, weights, licence."""
    from rich import box
    from rich.table import Table

    spec = _registry(app).model(model_id)
    data = spec_dict(spec, _loaded())
    if as_json:
        print_json(data)
        return
    about = Table(show_header=False, box=None, pad_edge=False)
    about.add_column(style="bold", no_wrap=True)
    about.add_column(overflow="fold")
    rows = [("id", spec.id), ("plugin", spec.plugin), ("about", spec.description), ("draws", spec.draws),
            ("weights", spec.weights), ("licence", spec.licence or "(not stated)"),
            ("batch", f"up to {spec.max_batch} images per generate() call"),
            ("loaded", "yes" if data["loaded"] else "no (loads on first use)")]
    for key, value in rows:
        if value:
            about.add_row(key, shown(str(value)))
    console.print(about)
    if spec.params:
        params = Table(title="parameters (-p NAME=VALUE)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("name", "type", "default"):
            params.add_column(column, no_wrap=True)
        params.add_column("allowed", overflow="fold", max_width=24)
        params.add_column("help", overflow="fold", ratio=1, min_width=20)
        for p in spec.params:
            default = "" if p.default in (None, "") else str(p.default)
            params.add_row(p.name, p.type, shown(default), shown(param_range(p)), shown(p.help))
        console.print(params)
    if spec.vocabulary is not None:
        console.print(f"[bold]vocabulary[/] ({len(spec.vocabulary)} words; other words are unknown to it)")
        console.print(shown(" ".join(spec.vocabulary)), soft_wrap=False)
    else:
        console.print("[bold]vocabulary[/] open (no word list)")
    if spec.card:
        console.print("[bold]model card[/]")
        figures = Table(show_header=False, box=None, pad_edge=False)
        figures.add_column(no_wrap=True)
        figures.add_column(overflow="fold")
        for key, value in _flatten(spec.card):
            figures.add_row(shown(key), shown(_figure(value)))
        console.print(figures)


def _flatten(data, prefix: str = ""):
    """("eval.colour.value", 0.99)... for nested card figures."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _figure(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


@models.group(name="import")
def models_import() -> None:
    """Import real weights from local files; each plugin adds its own subcommand."""


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_app
def plugins(app: App, as_json) -> None:
    """Installed plugins, what they register, and any that failed to load."""
    from rich.table import Table

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
        table.add_row(shown(info.name), shown(info.version or ""), shown(", ".join(info.models)),
                      shown(", ".join(info.datasets)), status)
    console.print(table)
    for info in infos:
        if not info.ok:
            console.print(f"[red]{shown(info.name)}[/] ({shown(info.module)}): {shown(info.error)}", highlight=False,
                          soft_wrap=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_app
def config(app: App, as_json) -> None:
    """The effective settings and where each comes from."""
    from rich.table import Table

    from studio.config import redact

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
        value_text = "(local execution)" if key == "broker_url" and value is None else value
        if key == "load_plugins" and value is None:
            value_text = "(all installed)"
        table.add_row(shown(key), shown(value_text), shown(settings.source.get(key, "")))
    console.print(table)
