"""``studio galip ...`` and ``studio models import galip``: thin click wrappers.

torch and the networks are imported inside each command, so ``studio --help`` stays fast.
Bad input ends as a one-line ``click.ClickException``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click

from studio.ml import BUNDLED_CLIP_ARCH as BUNDLED_CLIP

from .model_dir import OFFICIAL_CLIP_ARCH
from .plugin import INTERPOLATION_MODES


@click.group(name="galip")
def galip_group() -> None:
    """GALIP (Generative Adversarial CLIPs): train models, explore their latent space."""


def _option_value(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE as JSON where it parses (``0.75``, ``true``), else as text."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise click.UsageError(f"--dataset-option takes KEY=VALUE, got {item!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


@click.command(name="train")
@click.option("--dataset", default="shapes", show_default=True, help="Dataset name: shapes, emoji, folder:PATH "
              "or any registered dataset.")
@click.option("--dataset-option", "dataset_options", multiple=True, metavar="KEY=VALUE",
              help="An option of the dataset's factory, e.g. two_object_share=0.75 for shapes (repeatable; "
                   "the value is read as JSON where it parses, else as text: a list is '[\"noto\"]'). "
                   "A resumed run uses the options its command gives, as it does the learning rates.")
@click.option("--clip", "clip_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Frozen CLIP weights file [default: Studio's bundled small CLIP].")
@click.option("--clip-arch",
              help=f"open_clip architecture of --clip (e.g. ViT-B-32-quickgelu) [default: {BUNDLED_CLIP}, "
                   "Studio's small-CLIP format].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: checkpoint, metrics.jsonl, sample grids, final weights.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), help="Stop after this much wall time.")
@click.option("--steps", type=click.IntRange(min=1), help="Stop at this total step count.")
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--lr-g", type=click.FloatRange(min=0, min_open=True),
              help="Generator lr, also of a resumed run [default: 1e-4 with raw conditions, 4e-4 with sqrt_dim].")
@click.option("--lr-d", type=click.FloatRange(min=0, min_open=True), default=4e-4, show_default=True,
              help="Discriminators' lr, also of a resumed run.")
@click.option("--cond-scale", type=click.Choice(["raw", "sqrt_dim"]),
              help="Sentence embedding scaling [default: raw for CLIP ViT-B/32, sqrt_dim for small CLIPs].")
@click.option("--mapping", type=click.Choice(["galip", "clean"]), default="galip", show_default=True,
              help="Image -> CLIP input mapping (galip: the official double mapping).")
@click.option("--ngf", type=click.IntRange(min=4), help="Generator width [default: 64 official, 16 small].")
@click.option("--image-size", type=click.IntRange(min=16), help="Output size [default: CLIP's input size].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sample-every", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]),
              help="Mixed precision: fp16 (with loss scaling, the official CUDA setting) or bf16 (no scaling; fast on "
                   "GPUs and on CPUs with AMX) [default: fp16 on CUDA, fp32 on the CPU].")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads.")
@click.option("--fresh", is_flag=True, help="Start over even if --out holds a checkpoint.")
@click.option("--eval-n", type=click.IntRange(min=0), default=256, show_default=True,
              help="After training on shapes: `studio eval` prompts scored into the model card (0: skip).")
@click.option("--pixel-d", "pixel_weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of a pixel-level conditional discriminator beside GALIP's CLIP one (0: official GALIP).")
@click.option("--aux", "aux_weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of an auxiliary classifier in the pixel discriminator that teaches G each object's "
                   "colour, shape and size (shapes data only; needs --pixel-d).")
@click.option("--sim-weight", type=click.FloatRange(min=0), default=4.0, show_default=True,
              help="Weight of the CLIP text-image similarity term in G's loss.")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Keep an exponential moving average of the generator with this decay (e.g. 0.999) and ship "
                   "it: its sample grids, galip.safetensors and checkpoint imports are the average (0: off, "
                   "as official GALIP).")
@click.option("--init", "init_g", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Start the generator from this Studio GALIP weights file (a new run only).")
@click.option("--json", "as_json", is_flag=True,
              help="Print each metrics record and the summary as JSON lines (for machines) instead of a progress bar.")
def train_command(dataset, dataset_options, clip_file, clip_arch, out_dir, minutes, steps, batch_size, lr_g, lr_d,
                  cond_scale, mapping, ngf, image_size, seed, sample_every, device, precision, threads, fresh, eval_n,
                  pixel_weight, aux_weight, sim_weight, ema, init_g, as_json) -> None:
    """Train GALIP with the official losses on a captioned dataset, CLIP frozen."""
    if minutes is None and steps is None:
        raise click.UsageError("give --minutes or --steps")
    options = dict(_option_value(item) for item in dataset_options)
    if aux_weight > 0 and pixel_weight <= 0:
        raise click.UsageError("--aux needs --pixel-d: the classifier is part of the pixel discriminator")
    clip_file, clip_arch = default_clip(clip_file, clip_arch)
    import torch

    from studio.api import WeightsError

    from .generator import open_clip_model
    from .train import default_config, train_galip

    if threads:
        torch.set_num_threads(threads)
    from studio.ml.precision import check_training

    try:
        check_training(device, precision or ("fp16" if device.startswith("cuda") else "fp32"), ("fp32", "fp16", "bf16"))
        clip = open_clip_model(clip_arch, clip_file, device=device)
    except (WeightsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    overrides = {k: v for k, v in {"cond_scale": cond_scale, "ngf": ngf, "image_size": image_size,
                                   "mapping": mapping}.items() if v is not None}
    try:
        card = train_galip(out_dir, dataset, clip, config=default_config(clip, **overrides), resume=not fresh,
                           steps=steps, minutes=minutes, batch_size=batch_size, lr_g=lr_g, lr_d=lr_d, seed=seed,
                           sample_every=sample_every, device=device, precision=precision, pixel_weight=pixel_weight,
                           aux_weight=aux_weight, sim_weight=sim_weight, init_g=str(init_g) if init_g else None,
                           dataset_options=options, ema=ema,
                           meta={"dataset": dataset, "clip_arch": clip_arch,
                                 "clip_file": str(Path(clip_file).absolute())},
                           show_progress=not as_json,
                           on_metrics=(lambda record: click.echo(json.dumps(record))) if as_json else None)
    except (WeightsError, ValueError, FloatingPointError, KeyError) as exc:
        raise click.ClickException(f"training stopped: {exc}") from None
    if dataset == "shapes" and eval_n:
        card = _evaluate_run(out_dir, card, clip_arch, clip_file, eval_n, device)
    summary = {k: card[k] for k in ("steps", "seconds_this_run", "last_losses", "weights_sha256", "eval") if k in card}
    if as_json:
        click.echo(json.dumps({**summary, "weights": str(out_dir / "galip.safetensors")}))
        return
    losses = ", ".join(f"{k} {v:.4g}" for k, v in (card.get("last_losses") or {}).items() if k in ("errD", "errG"))
    click.echo(f"trained to step {card.get('steps')} in {card.get('seconds_this_run', 0):.0f}s"
               + (f": {losses}" if losses else ""))
    if card.get("eval"):
        click.echo("eval: " + ", ".join(f"{k} {v['value']:.3g}" for k, v in card["eval"].items()
                                        if isinstance(v, dict) and v.get("value") is not None))
    click.echo(f"weights: {out_dir / 'galip.safetensors'}")
    click.echo(f"import it: studio models import galip NAME {out_dir}")


def default_clip(clip_file: Path | None, clip_arch: str | None) -> tuple[Path, str]:
    """``--clip``/``--clip-arch`` as given, or Studio's bundled small CLIP when ``--clip`` is left out."""
    if clip_file is not None:
        return clip_file, clip_arch or BUNDLED_CLIP
    if clip_arch not in (None, BUNDLED_CLIP):
        raise click.UsageError(f"--clip-arch {clip_arch} needs --clip FILE (the weights of that architecture)")
    from studio.ml import BUNDLED_CLIP_FILE

    if not BUNDLED_CLIP_FILE.is_file():
        raise click.ClickException(f"the bundled CLIP is not installed ({BUNDLED_CLIP_FILE}); pass --clip FILE")
    return BUNDLED_CLIP_FILE, BUNDLED_CLIP


def _evaluate_run(out_dir: Path, card: dict, clip_arch: str, clip_file: Path, n: int, device: str) -> dict:
    """Score the run's final weights with `studio eval`'s yardstick and record it in the card.

    The judge is the CLIP the model was trained with (its own view of shape and CLIP score);
    colour and relation are judged from pixels either way.
    """
    from studio.ml.evaluate import BUNDLED_ARCH, evaluate_generator

    from studio.api import atomic_path

    from .generator import GalipGenerator, GalipSource

    generator = GalipGenerator(GalipSource("run", out_dir / "galip.safetensors", clip_arch, clip_file))
    generator.load(device)
    judge = f"{BUNDLED_ARCH if clip_arch == BUNDLED_CLIP else clip_arch}:{clip_file}"
    report = evaluate_generator(generator, n=n, clip=judge, device=device)
    card = {**card, "eval": {**report["metrics"], "n": n, "seed": report["seed"], "judge_clip": str(clip_file)}}
    with atomic_path(out_dir / "model_card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2, default=str))
    return card


galip_group.add_command(train_command)


@galip_group.command(name="interpolate")
@click.argument("prompts", nargs=-1, required=True)
@click.option("-m", "--model", "model_id", default="galip", show_default=True)
@click.option("--seed", "seeds", type=int, multiple=True,
              help="Key seeds (repeat the option); default 0, or 0 and 1 with a single prompt.")
@click.option("--frames", type=click.IntRange(1, 256), default=8, show_default=True, help="Frames between keys.")
@click.option("--what", type=click.Choice(INTERPOLATION_MODES), default="both", show_default=True,
              help="What moves: the noise (between seeds), the text (between prompts), or both.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also copy the frames here (frame_NNNN.png) and write strip.png.")
@click.option("--device", help="Device of an in-process run [default: Studio's device setting].")
def interpolate_command(prompts, model_id, seeds, frames, what, out_dir, device) -> None:
    """Walk the latent space between prompts and/or seeds, one stored job per frame.

    Each frame is an ordinary job of the model whose parameters (interp_to, interp_seed_to,
    interp_t) say where it lies on the path, so `studio show` and `studio regen` make it again.
    """
    from studio.api import StudioError, dispatch, engine as open_engine, load_settings, uses_broker

    from .generator import interpolation_requests

    prompts = [p.strip() for p in prompts]
    seeds = list(seeds) or ([0] if len(prompts) > 1 else [0, 1])
    try:
        requests = interpolation_requests(prompts, seeds, frames=frames, what=what)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    settings = load_settings()
    broker = uses_broker(settings)
    if broker and device:
        raise click.ClickException("--device applies to in-process runs; with a broker the workers choose")
    engine = open_engine(settings)
    files = []
    try:
        _check_galip_model(engine, model_id)
        for prompt in prompts:  # every key, also those only met as targets of the walk
            engine.validate(prompt, model_id, seeds[0], 1, {})
        for seed in seeds:
            engine.validate(prompts[0], model_id, seed, 1, {})
        for request in requests:
            engine.validate(request.prompt, model_id, request.seed, 1, request.params)

        def submit(request):
            return engine.submit(request.prompt, model_id, seed=request.seed, params=request.params)

        def start(request):
            return dispatch(engine, submit(request), lambda job: engine.run(job.id, device=device))

        # With a broker every frame is queued first, so the workers make them together.
        started = [start(request) for request in requests] if broker else map(start, requests)
        finished = (engine.wait(job.id) for job in started) if broker else started
        jobs = []
        for i, job in enumerate(finished):
            if job.status != "succeeded":
                raise click.ClickException(f"frame {i} of {len(requests)} (job {job.id}) {job.status}: "
                                           f"{job.error or 'no reason recorded'}")
            jobs.append(job)
            files.append(settings.home / engine.images(job.id)[0].path)
            click.echo(f"frame {i:04d}  job {job.id}  {files[-1]}")
    except StudioError as exc:
        raise click.ClickException(str(exc)) from None
    if out_dir is None:
        click.echo(f"{len(jobs)} frames stored (jobs {jobs[0].id} .. {jobs[-1].id}); --out also writes a strip")
        return
    from PIL import Image

    from .generator import strip_frames

    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for i, file in enumerate(files):
        target = out_dir / f"frame_{i:04d}.png"
        shutil.copyfile(file, target)  # the stored PNG: its recipe travels with it
        with Image.open(target) as img:
            images.append(img.convert("RGB"))
    strip = strip_frames(images, out_dir / "strip.png")
    click.echo(f"{len(jobs)} frames stored (jobs {jobs[0].id} .. {jobs[-1].id}) and copied to {out_dir}; "
               f"strip: {strip}")


def _check_galip_model(engine, model_id: str) -> None:
    """One line naming the GALIP models when ``model_id`` is not one of them."""
    spec = engine.registry.models.get(model_id)
    if spec is None or spec.plugin != "galip":
        known = ", ".join(sorted(s.id for s in engine.registry.models.values() if s.plugin == "galip")) or "none"
        raise click.ClickException(f"no GALIP model {model_id!r} (known: {known})")


@click.command(name="galip")
@click.argument("name")
@click.argument("run_folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Official GALIP checkpoint (.pth) or Studio GALIP weights (.safetensors), instead of RUN_FOLDER.")
@click.option("--clip", "clip_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The CLIP weights the checkpoint was trained with [default: the one the run's "
                   "model_card.json names].")
@click.option("--clip-arch",
              help=f"open_clip architecture of --clip, or {BUNDLED_CLIP} [default: the run's, else "
                   f"{BUNDLED_CLIP} for a CLIP Studio ships, else {OFFICIAL_CLIP_ARCH}].")
@click.option("--copy-clip", is_flag=True, help="Copy the CLIP file into the model folder instead of referencing it.")
@click.option("--force", is_flag=True, help="Replace an existing model of that name.")
def import_command(name, run_folder, checkpoint, clip_file, clip_arch, copy_clip, force) -> None:
    """Import GALIP weights as model galip/NAME (checks they fit, converts to safetensors).

    Give a finished `studio galip train` run folder as RUN_FOLDER (its model card names the CLIP),
    or a checkpoint file with --checkpoint (and --clip/--clip-arch for official weights).
    """
    from rich.console import Console

    from studio.api import load_settings

    from .model_dir import ModelImportError, import_model, run_sources

    try:
        checkpoint, clip_file, clip_arch = run_sources(run_folder, checkpoint, clip_file, clip_arch)
        card = import_model(name, checkpoint, clip_file, clip_arch, load_settings().models_dir,
                            copy_clip=copy_clip, force=force)
    except ModelImportError as exc:
        raise click.ClickException(str(exc)) from None
    console = Console()
    console.print(f"imported [bold]{card.id}[/bold] into {card.folder}")
    console.print(f"weights sha256 {card.data['weights_sha256']}  clip sha256 {card.data['clip']['sha256']}")
    if card.data.get("generator"):
        console.print(f"generator: {card.data['generator']}")
    if card.terms:
        console.print(f"[yellow]Terms of these weights:[/yellow] {card.terms}")
