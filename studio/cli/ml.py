"""CLI commands of the ML layer: ``studio train clip`` and ``studio eval``.

Thin click wrappers; the work (and the torch import) happens in ``studio.ml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from studio.cli.common import cli, parse_params


@cli.group(name="train")
def train_group() -> None:
    """Train models (plugins add their own, e.g. `studio NAME train`)."""


def _clip_configs() -> list[str]:
    from studio.ml.clip_configs import CONFIGS

    return sorted(CONFIGS)


@train_group.command(name="clip")
@click.option("--dataset", default="shapes", show_default=True, help="shapes, emoji, or folder:PATH")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run directory (checkpoints, logs, model card).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), help="Stop after this much wall time.")
@click.option("--steps", type=click.IntRange(min=1), help="Stop after this many optimiser steps.")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-4, show_default=True)
@click.option("--model", "config_name", default="studio-tiny-64", show_default=True,
              help="Architecture (see studio.ml.clip_configs: studio-tiny-64, studio-tiny-64-avg, studio-small-64).")
@click.option("--probe-weight", type=click.FloatRange(min=0),
              help="Weight of the shared attribute probe (shapes only; helps word order and layout)  [default: 0; "
                   "a resumed run keeps its own].")
@click.option("--distractor-weight", type=click.FloatRange(min=0),
              help="Weight of image-side negatives: each caption against its image with one outline redrawn "
                   "(shapes only; trains a CLIP that re-ranks a generator's candidates by shape)  [default: 0; "
                   "a resumed run keeps its own].")
@click.option("--blur", type=click.FloatRange(min=0, max=4),
              help="Largest Gaussian blur (sigma, pixels) for half of each batch: soft edges, like generated "
                   "images  [default: 0; a resumed run keeps its own].")
@click.option("--distractor-resize", type=click.FloatRange(min=0, max=1),
              help="Share of the distractors of captions that name sizes which keep the outline and draw the object "
                   "at the other size (small <-> large); needs --distractor-weight  [default: 0; a resumed run "
                   "keeps its own].")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch CPU threads.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: mixed precision (weights stay fp32); much faster on GPUs and on CPUs with AMX.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
@click.option("--init", "init_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Start a new run from a CLIP exported with `studio train export-clip` (fresh optimiser).")
def train_clip_command(dataset, out_dir, minutes, steps, batch_size, lr, config_name, probe_weight, distractor_weight,
                       blur, distractor_resize, threads, precision, resume, init_file) -> None:
    """Train a small CLIP contrastively (open_clip's loss plus hard negative captions)."""
    if minutes is None and steps is None:
        raise click.UsageError("give --minutes or --steps")
    if config_name not in _clip_configs():
        raise click.BadParameter(f"unknown config {config_name!r} (known: {', '.join(_clip_configs())})", param_hint="--model")
    from studio.ml.train_clip import train_clip

    try:
        given = {k: v for k, v in (("probe_weight", probe_weight), ("distractor_weight", distractor_weight),
                                   ("blur", blur), ("distractor_resize", distractor_resize)) if v is not None}
        summary = train_clip(out_dir, dataset=dataset, minutes=minutes, steps=steps, batch_size=batch_size, lr=lr,
                             resume=resume, model=config_name, **given, threads=threads,
                             precision=precision, init=str(init_file) if init_file else None)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(summary, indent=2, default=str))


@train_group.command(name="export-clip")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Choice(["best", "checkpoint"]), default="best", show_default=True,
              help="Which checkpoint of the run: the best held-out score or the last one.")
def export_clip_command(run_dir, out, checkpoint) -> None:
    """Write a trained CLIP as the small fp16 file Studio ships, with its card next to it.

    The file keeps the token-embedding rows of the texts of the run's dataset (and the shapes
    grammar) only. The card (OUT with .json) holds the run's training record and the held-out
    scores of the exported file itself, measured after the fp16 round trip: shapes' zero-shot
    probes, or concept retrieval from held-out phrasings for an emoji run.
    """
    source = run_dir / checkpoint
    if not (source / "model.safetensors").is_file():
        raise click.ClickException(f"{source}: no checkpoint there (model.safetensors missing)")
    from studio.ml.clip_configs import export_bundled_clip, load_bundled_clip
    from studio.ml.train_clip import held_out_score
    from studio.plumbing import one_line

    try:
        info = export_bundled_clip(source, out)
    except ValueError as exc:  # e.g. the dataset of a run that did not record its token ids is gone
        raise click.ClickException(one_line(exc)) from None
    card_path = run_dir / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card.pop("evaluation", None)
    card["checkpoint"] = checkpoint
    card["steps"] = info["step"] if info.get("step") is not None else card.get("steps")
    card["zero_shot"] = held_out_score(load_bundled_clip(out), info["dataset"], info["config"], n=256)
    card["file"] = {"bytes": info["bytes"], "token_rows_kept": info["rows_kept"], "dtype": "float16"}
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    click.echo(json.dumps({"path": str(out), **card["zero_shot"]}, indent=2))


@cli.command(name="eval")
@click.option("-m", "--model", "model_id", required=True, help="Model id to evaluate.")
@click.option("--dataset", type=click.Choice(["shapes", "emoji"]), default="shapes", show_default=True,
              help="shapes: judged from the pixels; emoji: concept accuracy against every picture of the dataset.")
@click.option("--n", "count", type=click.IntRange(1, 100_000), default=512, show_default=True, help="Number of prompts.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prompt list and of the images.")
@click.option("--clip", "clip_name", default="bundled", show_default=True,
              help="CLIP behind the secondary figures (shapes) or the feature matching (emoji): bundled (Studio's CLIP "
                   "for that dataset) or ARCH:PATH (studio-bundled:PATH for an exported small CLIP).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Model parameter for every image (repeatable), e.g. -p candidates=8.")
@click.option("--fd", "fd_n", type=click.IntRange(0, 100_000), default=0, show_default=True,
              help="Also a Frechet distance on CLIP image features over this many images (e.g. 1000; 0: skip).")
@click.option("--json", "as_json", is_flag=True)
def eval_command(model_id, dataset, count, seed, clip_name, out_path, params, fd_n, as_json) -> None:
    """How well a model draws what held-out prompts ask.

    shapes: colour, shape, relation, size, background, blank canvases and stray blobs come from the
    pixels; CLIP's shape choice, the CLIP score and the optional Frechet distance are secondary.
    emoji: each image is matched against every picture of the dataset, by CLIP image features and
    by pixels; top-1/top-5 concept accuracy, seed diversity and a Frechet distance.
    """
    from rich.console import Console
    from rich.table import Table

    from rich.progress import Progress

    from studio.config import load_settings
    from studio.errors import StudioError
    from studio.generators import ParamError
    from studio.ml.evaluate import LOWER_IS_BETTER, EvalError, evaluate_model

    values = parse_params(params)
    if fd_n and dataset == "emoji":
        raise click.UsageError("--fd is for shapes; an emoji eval always reports its Frechet distance")
    if fd_n == 1 or (dataset == "emoji" and count < 2):
        raise click.UsageError("a Frechet distance compares feature covariances: it needs at least 2 images "
                               "(--fd 0 skips it for shapes; an emoji eval needs --n 2 or more)")
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("generating images", total=max(count, fd_n))
        try:
            report = evaluate_model(
                load_settings(), model_id, n=count, seed=seed, clip=clip_name, params=values, fd_n=fd_n, dataset=dataset,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except (EvalError, ParamError, StudioError) as exc:
            raise click.ClickException(str(exc)) from None
    try:  # strict JSON: a figure no prompt asks is null; any other non-finite number is a bug to say
        text = json.dumps(report, indent=2, default=str, allow_nan=False)
    except ValueError as exc:
        raise click.ClickException(f"the report holds a non-finite number ({exc}); nothing written") from None
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text)
    if as_json:
        click.echo(text)
        return
    shown = "".join(f" -p {k}={v}" for k, v in values.items())
    on = f" --dataset {dataset}" if dataset != "shapes" else ""
    table = Table(title=f"studio eval --model {model_id}{on} --n {count}{shown}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")
    split = report.get("by_objects") or {}
    for objects in split:
        table.add_column(f"{objects} object{'s' if objects != '1' else ''}", justify="right")
    table.add_column("judged by")
    for name, metric in report["metrics"].items():
        judge = "CLIP" if name.startswith("clip") or name == "fd" else "pixels"
        if name == "diversity":
            judge = "pixels, two seeds"
        better = " (lower is better)" if name in LOWER_IS_BETTER else ""
        parts = [_share(split[objects].get(name)) for objects in split]
        table.add_row(name, _share(metric) or "-", str(metric["n"]), *parts, judge + better)
    Console().print(table)


def _share(metric: dict | None) -> str:
    """A metric's value, or blank where no prompt (of that part) asks it."""
    return f"{metric['value']:.3f}" if metric and metric["n"] and metric["value"] is not None else ""
