"""``studio doctor``: what a person runs first when something is off.

One line per check, exit code 0 when every check passes and 1 otherwise, ``--json`` for
scripts. Nothing is changed: the database is opened without migrating, no job is run.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from studio.cli.common import App, cli, console, pass_app, print_json

MIN_FREE_BYTES = 1 << 30  # less than 1 GiB free in the home fails


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _database(app: App) -> tuple[list[Check], object | None]:
    from studio.config import redact
    from studio.db.migrate import HEAD, current_revision
    from studio.db.session import open_database
    from studio.plumbing import one_line

    settings = app.settings
    shown = redact(settings.database_url)
    if settings.database_missing():
        return [Check("database", True, f"{shown}: not created yet (made and migrated on first use)")], None
    try:
        db = open_database(settings.database_url, upgrade=False)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return [Check("database", False, f"{shown}: {one_line(exc)}")], None
    try:
        revision = current_revision(db)
    except Exception as exc:  # noqa: BLE001
        return [Check("database", False, f"{shown}: reachable, schema unreadable: {one_line(exc)}")], db
    if revision == HEAD:
        return [Check("database", True, f"{shown}: reachable, schema at {HEAD} (current)")], db
    return [Check("database", False, f"{shown}: reachable, schema at {revision or 'none'}, current is {HEAD}: "
                                     "run `studio db upgrade`")], db


def _broker(app: App) -> list[Check]:
    from studio.config import redact
    from studio.plumbing import one_line

    url = app.settings.broker_url
    if not url:
        return [Check("broker", True, "none configured: jobs run in the submitting process")]
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        return [Check("broker", False, f"{redact(url)}: {one_line(exc)}")]
    return [Check("broker", True, f"{redact(url)}: reachable")]


def _workers(app: App, db, models: list[str]) -> list[Check]:
    if not app.settings.broker_url:
        return []
    if db is None:
        return [Check("workers", False, "unknown: the database is not reachable")]
    from studio.executors import liveness

    alive = [w for w in liveness.recent_workers(db, within_s=3600) if liveness.alive(w)]
    checks = []
    for model in models:
        serving = [w for w in alive if not w.queues or model in w.queues or f"studio.{model}" in w.queues]
        if serving:
            names = ", ".join(f"{w.id} ({w.device})" for w in serving)
            checks.append(Check(f"workers {model}", True, f"{len(serving)} alive: {names}"))
        else:
            checks.append(Check(f"workers {model}", False, f"no live worker takes queue {model!r}: jobs will wait"))
    return checks


def _device(app: App) -> list[Check]:
    from studio.plumbing import one_line

    try:
        device = app.settings.resolve_device()
    except Exception as exc:  # noqa: BLE001
        return [Check("device", False, one_line(exc))]
    try:
        import torch

        (torch.ones(4, device=device) * 2).sum().item()
    except ImportError:
        return [Check("device", False, f"{device}: torch is not installed (see the README's install line)")]
    except Exception as exc:  # noqa: BLE001
        return [Check("device", False, f"{device}: {one_line(exc)}")]
    return [Check("device", True, f"{device}: usable (torch {torch.__version__})")]


def _plugins_and_models(app: App) -> tuple[list[Check], list[str]]:
    from studio.plugins import get_registry
    from studio.plumbing import sha256_file

    registry = get_registry(app.settings.load_plugins)
    checks = []
    for info in registry.plugins.values():
        if info.ok:
            what = ", ".join(info.models + info.datasets) or "nothing registered"
            checks.append(Check(f"plugin {info.name}", True, f"{info.version or '?'}: {what}"))
        else:
            checks.append(Check(f"plugin {info.name}", False, info.error or "failed"))
    for spec in sorted(registry.models.values(), key=lambda s: s.id):
        path = Path(spec.weights) if spec.weights else None
        if path is not None and path.is_file():
            if spec.weights_sha256:
                digest = sha256_file(path)
                ok = digest == spec.weights_sha256
                detail = (f"{path}: sha256 matches the card ({digest[:12]})" if ok else
                          f"{path}: sha256 {digest[:12]}, the card says {spec.weights_sha256[:12]}: the file changed")
                checks.append(Check(f"model {spec.id}", ok, detail))
            else:
                checks.append(Check(f"model {spec.id}", True, f"{path}: present (no sha256 on the card to compare)"))
        elif path is not None and path.is_dir():
            checks.append(Check(f"model {spec.id}", True, f"{path}: present"))
        elif spec.weights.startswith("(not installed)") or "not installed" in spec.weights:
            checks.append(Check(f"model {spec.id}", False, spec.weights))
        else:
            checks.append(Check(f"model {spec.id}", True, f"weights: {spec.weights or 'none needed'}"))
    return checks, sorted(registry.models)


def _disk(app: App) -> list[Check]:
    home = app.settings.home
    probe = home
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    ok = free >= MIN_FREE_BYTES
    detail = f"{home}: {free / (1 << 30):.1f} GiB free" + ("" if ok else " (under 1 GiB: images and models need room)")
    return [Check("disk", ok, detail)]


def run_checks(app: App) -> list[Check]:
    checks, db = _database(app)
    checks += _broker(app)
    plugin_checks, models = _plugins_and_models(app)
    checks += _workers(app, db, models)
    checks += _device(app)
    checks += plugin_checks
    checks += _disk(app)
    if db is not None:
        db.dispose()
    return checks


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The checks as JSON.")
@pass_app
def doctor(app: App, as_json) -> None:
    """Check the setup, one line per check: database, broker, workers, device, plugins, weights, disk.

    Exit code 0 when every check passes, 1 otherwise. Changes nothing.
    """
    from rich.markup import escape

    checks = run_checks(app)
    if as_json:
        print_json([asdict(c) for c in checks])
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            mark = "[green]ok  [/]" if c.ok else "[red]FAIL[/]"
            console.print(f"{mark} {escape(c.name.ljust(width))}  {escape(c.detail)}", highlight=False, soft_wrap=True)
    if not all(c.ok for c in checks):
        raise SystemExit(1)
