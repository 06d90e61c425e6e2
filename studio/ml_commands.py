"""CLI commands of the ML layer: ``studio train clip`` and ``studio eval``.

Thin click wrappers; the work (and the torch import) happens in ``studio.ml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group(name="train")
def train_group() -> None:
    """Train models (plugins add their own trainers, e.g. `studio galip train`)."""


@train_group.command(name="clip")
@click.option("--dataset", default="shapes", show_default=True, help="shapes, or folder:PATH")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run directory (checkpoints, logs, model card).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), help="Stop after this much wall time.")
@click.option("--steps", type=click.IntRange(min=1), help="Stop after this many optimiser steps.")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-4, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
def train_clip_command(dataset, out_dir, minutes, steps, batch_size, lr, resume) -> None:
    """Train a small CLIP contrastively (open_clip's loss plus hard negative captions)."""
    if minutes is None and steps is None:
        raise click.UsageError("give --minutes or --steps")
    from studio.ml.train_clip import train_clip

    summary = train_clip(out_dir, dataset=dataset, minutes=minutes, steps=steps, batch_size=batch_size, lr=lr, resume=resume)
    click.echo(json.dumps(summary, indent=2, default=str))


@click.command(name="eval")
@click.option("-m", "--model", "model_id", required=True, help="Model id to evaluate.")
@click.option("--n", "count", type=click.IntRange(1, 100_000), default=512, show_default=True, help="Number of prompts.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prompt list and of the images.")
@click.option("--clip", "clip_name", default="bundled", show_default=True, help="CLIP used for shape and CLIP score.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
@click.option("--json", "as_json", is_flag=True)
def eval_command(model_id, count, seed, clip_name, out_path, as_json) -> None:
    """How well a model follows `shapes` prompts: colour, shape, relation, CLIP score."""
    from rich.console import Console
    from rich.table import Table

    from rich.progress import Progress

    from studio.config import load_settings
    from studio.ml.evaluate import EvalError, evaluate_model

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"generating {count} images", total=count)
        try:
            report = evaluate_model(
                load_settings(), model_id, n=count, seed=seed, clip=clip_name,
                progress=lambda done, _total: bar.update(task, completed=done),
            )
        except EvalError as exc:
            raise click.ClickException(str(exc)) from None
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2, default=str))
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    table = Table(title=f"studio eval --model {model_id} --n {count}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")
    for name, metric in report["metrics"].items():
        table.add_row(name, f"{metric['value']:.3f}", str(metric["n"]))
    Console().print(table)
