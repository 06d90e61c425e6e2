"""``studio models`` (and ``models import``), ``plugins``, ``config``: what is installed and how it is set.

None of these touches the database: they import no SQLAlchemy and no torch.
"""

from __future__ import annotations

import click

from studio.cli.common import App, cli, console, pass_app, print_json, shown


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models(ctx: click.Context, as_json) -> None:
    """The models the installed plugins provide."""
    from rich.table import Table

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
        table.add_row(shown(s.id), shown(s.plugin), shown(s.weights), "yes" if s.id in loaded else "no", shown(params))
    console.print(table)


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
