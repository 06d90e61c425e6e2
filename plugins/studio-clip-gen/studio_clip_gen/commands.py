"""CLI: ``studio clip-gen train vqgan|transformer``, ``studio clip-gen package`` and ``studio models import clip-gen``.

Thin wrappers: options are parsed here, torch is imported inside each command, and every
expected failure (bad file, bad dataset, parts that do not fit) is one line via ClickException.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path

import click

#: Named VQGAN shapes. ``tiny``: 64px, f8 (an 8x8 grid), 512 codes (the first bundled model's; it now uses ``tiny-f4c``).
VQ_PRESETS = {
    "tiny": dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(8,), resolution=64,
                 z_channels=64, embed_dim=64, n_embed=512),
    # the tiny one at 4x the codes (16x16 grid at 64px): the tiny VQGAN's 8x8 codes cannot hold the
    # corners of small shapes (see `studio clip-gen judge-vqgan`)
    "tiny-f4": dict(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(), resolution=64,
                    z_channels=64, embed_dim=64, n_embed=1024),
    # the same with centred downsampling (taming pads right and bottom only, which shifts every code
    # half a pixel per level towards the lower right)
    "tiny-f4c": dict(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=(), resolution=64,
                     z_channels=64, embed_dim=64, n_embed=1024, downsample_padding="centred"),
    # the tiny one (8x8 grid) with centred downsampling: a quarter of the tokens of the f4 ones, for
    # a large varied set (emoji) where a short sequence is what a small transformer can sample well
    "tiny-c": dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(8,), resolution=64,
                   z_channels=64, embed_dim=64, n_embed=512, downsample_padding="centred"),
    "f16": dict(),  # taming's ImageNet f16 (256px, 16x16 grid)
}

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _fail(exc: Exception) -> click.ClickException:
    from studio.api import one_line

    return click.ClickException(one_line(exc))


def _dataset(name: str, size: int):
    try:
        from studio.ml.datasets import open_dataset
    except ImportError as exc:
        raise click.ClickException(f"datasets are not available: {exc}") from None
    try:
        return open_dataset(name, size=size)
    except (ValueError, OSError, TypeError) as exc:
        raise _fail(exc) from None


RUN_CARD = "model_card.json"


def _clip_or_bundled(clip_file: Path | None) -> Path:
    """``--clip`` as given, or Studio's bundled small CLIP (its format needs no ``--clip-arch``)."""
    if clip_file is not None:
        return clip_file
    from studio.ml import BUNDLED_CLIP_FILE

    if not BUNDLED_CLIP_FILE.is_file():
        raise click.ClickException(f"the bundled CLIP is not installed ({BUNDLED_CLIP_FILE}); pass --clip FILE")
    return BUNDLED_CLIP_FILE


def _write_run_card(out_dir: Path, card: dict) -> None:
    """``model_card.json`` of a finished run: what it was made from, so it imports as it is."""
    from studio.api import write_atomic

    write_atomic(out_dir / RUN_CARD, json.dumps(card, indent=2, default=str) + "\n")


def _echo(record: dict) -> None:
    click.echo(json.dumps(record, default=str))


#: The figures a stage's progress line shows, from its metrics records.
_SHOWN = {"vqgan": ("loss", "psnr", "codes_used"), "transformer": ("loss", "accuracy")}


@contextmanager
def _training_display(stage: str, as_json: bool):
    """``(echo, on_step)`` for a trainer: JSON lines on stdout with ``--json``, else a rich progress bar
    on stderr (as ``studio galip train`` shows) whose line carries the last logged figures."""
    if as_json:
        yield _echo, None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(stage, total=None)

        def echo(record: dict) -> None:
            figures = "  ".join(f"{k} {record[k]:.4g}" for k in _SHOWN[stage] if isinstance(record.get(k), (int, float)))
            bar.update(task, completed=record.get("step", 0), description=f"{stage} {figures}")

        def on_step(step: int, total: int) -> None:
            bar.update(task, completed=step, total=total)

        yield echo, on_step


def _report(stage: str, summary: dict, out_dir: Path, as_json: bool) -> None:
    """The end of a training run: one JSON object with ``--json``, else a few lines for people."""
    if as_json:
        click.echo(json.dumps(summary, default=str))
        return
    metrics = summary.get("metrics") or {}
    figures = ", ".join(f"{k} {metrics[k]:.4g}" for k in _SHOWN[stage] if isinstance(metrics.get(k), (int, float)))
    click.echo(f"trained {summary['steps']} steps in {summary['elapsed_s']:.0f}s" + (f": {figures}" if figures else ""))
    click.echo(f"weights: {summary['weights']}  (all figures: {out_dir / 'metrics.jsonl'})")
    if stage == "vqgan":
        if "reconstruction_judge" in summary:
            from .ceiling import ceiling_line

            click.echo(f"pixel judge on its reconstructions (the most a transformer over it can reach): "
                       f"{ceiling_line(summary['reconstruction_judge'])}")
        click.echo(f"next: studio clip-gen train transformer --vqgan {summary['weights']} --out RUN_FOLDER")
    else:
        click.echo(f"import it: studio models import clip-gen NAME {out_dir}")


_JSON = click.option("--json", "as_json", is_flag=True,
                     help="Print each metrics record and the summary as JSON lines (for machines) instead of a progress bar.")


@click.group(name="clip-gen")
def clip_gen_group() -> None:
    """CLIP-GEN: train its VQGAN and transformer on images alone, package models."""


@clip_gen_group.group(name="train")
def train_group() -> None:
    """Train CLIP-GEN: `vqgan` first, then `transformer` on that VQGAN.

    The transformer's run folder imports as it is: `studio models import clip-gen NAME RUN_FOLDER`.
    """


@train_group.command(name="vqgan")
@click.option("--dataset", default="shapes", show_default=True, help="shapes, emoji, folder:PATH or any registered dataset")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run directory.")
@click.option("--preset", type=click.Choice(sorted(VQ_PRESETS)), default="tiny", show_default=True)
@click.option("--n-embed", type=click.IntRange(2), help="Codebook size (overrides the preset).")
@click.option("--steps", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), help="Stop after this much wall time.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-4, show_default=True,
              help="Learning rate, also of a resumed run.")
@click.option("--disc-start", type=click.IntRange(0), default=1000, show_default=True, help="Step that switches the GAN loss on.")
@click.option("--perceptual", default="none", show_default=True, help="none, clip (the --clip CLIP; Studio's bundled small one by default) or lpips:FILE.")
@click.option("--l2-weight", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Weight of an MSE term next to L1 (helps small objects on plain backgrounds).")
@click.option("--clip", "clip_file", type=_FILE,
              help="CLIP weights for --perceptual clip [default: Studio's bundled small CLIP].")
@click.option("--clip-arch", help="open_clip architecture of --clip (not needed for Studio's bundled CLIP file).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: mixed precision (weights stay fp32); much faster on GPUs and on CPUs with AMX.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out.")
@click.option("--judge-n", type=click.IntRange(0), default=256, show_default=True,
              help="After training a 64px VQGAN on shapes: held-out scenes it reconstructs for the pixel judge "
                   "(the ceiling of any transformer over it; 0: skip).")
@_JSON
def train_vqgan_command(dataset, out_dir, preset, n_embed, steps, minutes, batch_size, lr, disc_start, perceptual,
                        l2_weight, clip_file, clip_arch, seed, device, precision, resume, judge_n, as_json) -> None:
    """Train the VQGAN (stage 1): L1 + perceptual + codebook + PatchGAN after --disc-start."""
    from .checkpoints import WeightsError
    from .losses import LPIPS, ClipPerceptual
    from .model_dir import read_clip
    from studio.ml.precision import check_training

    from .train import VQTrainConfig, train_vqgan
    from .vqgan import VQConfig

    try:
        check_training(device, precision)
        vq = VQConfig.from_dict({**VQConfig().to_dict(), **VQ_PRESETS[preset], **({"n_embed": n_embed} if n_embed else {})})
        distance = None
        if perceptual == "clip":
            distance = ClipPerceptual(read_clip(_clip_or_bundled(clip_file), clip_arch)[0])
        elif perceptual.startswith("lpips:"):
            distance = LPIPS.from_file(Path(perceptual[len("lpips:"):]))
        elif perceptual != "none":
            raise click.UsageError(f"--perceptual must be none, clip or lpips:FILE, got {perceptual!r}")
        cfg = VQTrainConfig(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, disc_start=disc_start,
                            l2_weight=l2_weight, seed=seed, precision=precision)
        data = _dataset(dataset, vq.resolution)
        with _training_display("vqgan", as_json) as (echo, on_step):
            summary = train_vqgan(data, out_dir, vq, cfg, perceptual=distance, resume=resume, device=device,
                                  echo=echo, on_step=on_step)
        if judge_n and dataset == "shapes" and vq.resolution == 64:
            from .ceiling import vqgan_ceiling
            from .checkpoints import load_vqgan

            summary["reconstruction_judge"] = vqgan_ceiling(load_vqgan(Path(summary["weights"])), judge_n)
        _write_run_card(out_dir, {"model": "clip-gen", "stage": "vqgan", "dataset": dataset, **summary,
                                  "vqgan": {"file": str((out_dir / "vqgan.safetensors").absolute())}})
    except (WeightsError, ValueError, OSError) as exc:
        raise _fail(exc) from None
    _report("vqgan", summary, out_dir, as_json)


@clip_gen_group.command(name="judge-vqgan")
@click.argument("vqgan_file", type=_FILE, metavar="VQGAN_FILE")
@click.option("-n", "count", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="Held-out scenes of the shapes grammar to reconstruct.")
@_JSON
def judge_vqgan_command(vqgan_file, count, as_json) -> None:
    """The pixel judge on a VQGAN's reconstructions of held-out `shapes` scenes (64px VQGANs).

    Every CLIP-GEN image is the decoding of some code grid, so these figures are the most a
    transformer trained over this VQGAN can reach (see studio_clip_gen.ceiling).
    """
    from .ceiling import ceiling_line, vqgan_ceiling
    from .checkpoints import WeightsError, load_vqgan

    try:
        vqgan = load_vqgan(vqgan_file)
    except (WeightsError, ValueError, OSError) as exc:
        raise _fail(exc) from None
    if vqgan.config.resolution != 64:
        raise click.ClickException(f"{vqgan_file} works at {vqgan.config.resolution}px; the shapes judge needs a 64px VQGAN")
    scores = vqgan_ceiling(vqgan, count)
    if as_json:
        click.echo(json.dumps({"vqgan": str(vqgan_file), "n": count, **scores}))
    else:
        click.echo(f"{vqgan_file} ({vqgan.config.grid}x{vqgan.config.grid} codes, n={count}): {ceiling_line(scores)}")


@train_group.command(name="transformer")
@click.option("--dataset", default="shapes", show_default=True, help="shapes, emoji, folder:PATH or any registered dataset")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run directory.")
@click.option("--vqgan", "vqgan_file", type=_FILE, required=True, help="A trained VQGAN (vqgan.safetensors or a checkpoint).")
@click.option("--vqgan-config", type=_FILE, help="taming yaml for a taming checkpoint.")
@click.option("--clip", "clip_file", type=_FILE,
              help="The CLIP that conditions the transformer [default: Studio's bundled small CLIP].")
@click.option("--clip-arch", help="open_clip architecture of --clip (not needed for Studio's bundled CLIP file).")
@click.option("--init", "init_file", type=_FILE,
              help="Start a new run from these transformer weights (e.g. a model's transformer.safetensors); "
                   "the architecture comes from the file.")
@click.option("--width", type=click.IntRange(8), default=256, show_default=True)
@click.option("--layers", type=click.IntRange(1), default=6, show_default=True)
@click.option("--heads", type=click.IntRange(1), default=8, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=5000, show_default=True)
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True))
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-4, show_default=True)
@click.option("--cond-noise", type=click.FloatRange(0), default=0.1, show_default=True, help="LAFITE noise on the image embedding.")
@click.option("--clip-loss-weight", type=click.FloatRange(0), default=0.0, show_default=True, help="The paper's image-level CLIP loss.")
@click.option("--cond-drop", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Share of rows trained on a learned null condition, so the model can sample with classifier-free "
                   "guidance (the `guidance` parameter; 0.1 is usual; 0: no null condition).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: mixed precision (weights stay fp32); much faster on GPUs and on CPUs with AMX.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out.")
@_JSON
@click.pass_context
def train_transformer_command(ctx, dataset, out_dir, vqgan_file, vqgan_config, clip_file, clip_arch, init_file, width,
                              layers, heads,
                              dropout, steps, minutes, batch_size, lr, cond_noise, clip_loss_weight, cond_drop, seed,
                              device, precision, resume, as_json) -> None:
    """Train the transformer (stage 2) on images: CLIP image embeddings condition the tokens."""
    from .checkpoints import WeightsError
    from .clip_embed import embed_dim
    from .gpt import GPTConfig
    from .model_dir import read_vqgan, read_clip
    from studio.ml.precision import check_training

    from .train import GPTTrainConfig, init_record, train_transformer
    from .vqgan import VQModel

    try:
        clip_file = _clip_or_bundled(clip_file)
        state, vq = read_vqgan(vqgan_file, vqgan_config)
        vqgan = VQModel(vq)
        vqgan.load_state_dict(state)
        clip_model, clip_spec = read_clip(clip_file, clip_arch)
        check_training(device, precision)
        shape = dict(n_codes=vq.n_embed, grid=vq.grid, width=width, n_layers=layers, n_heads=heads,
                     clip_dim=embed_dim(clip_model), dropout=dropout, null_condition=cond_drop > 0)
        init = init_info = None
        if init_file is not None:
            init, gpt = _initial_transformer(ctx, init_file, shape)
            init_info = init_record(init_file)
        else:
            gpt = GPTConfig(**shape)
        cfg = GPTTrainConfig(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, cond_noise=cond_noise,
                             clip_loss_weight=clip_loss_weight, cond_drop=cond_drop, seed=seed, precision=precision)
        data = _dataset(dataset, vq.resolution)
        with _training_display("transformer", as_json) as (echo, on_step):
            summary = train_transformer(data, out_dir, vqgan, clip_model, gpt, cfg,
                                        clip_info={**clip_spec, "source": str(clip_file)}, init=init,
                                        init_info=init_info, resume=resume,
                                        device=device, echo=echo, on_step=on_step)
        _write_run_card(out_dir, {
            "model": "clip-gen", "stage": "transformer", "dataset": dataset, **summary,
            "transformer": str((out_dir / "transformer.safetensors").absolute()),
            "vqgan": {"file": str(vqgan_file.absolute()),
                      "config": str(vqgan_config.absolute()) if vqgan_config else None},
            "clip": {"file": str(clip_file.absolute()), "arch": clip_arch, "kind": clip_spec["kind"]}})
    except (WeightsError, ValueError, OSError) as exc:
        raise _fail(exc) from None
    _report("transformer", summary, out_dir, as_json)


def _initial_transformer(ctx: click.Context, path: Path, asked: dict):
    """Weights and config of ``--init``: the file's architecture (``--width/--layers/--heads`` only
    where given, and then they must agree), with this run's dropout and null condition."""
    import dataclasses

    from .model_dir import read_transformer

    given = {option: ctx.get_parameter_source(option) is not click.core.ParameterSource.DEFAULT
             for option in ("width", "layers", "heads")}
    # a reimplementation checkpoint does not record its heads: a given --heads says how many
    state, cfg, _ = read_transformer(path, asked["n_heads"] if given["heads"] else None)
    for option, field in (("width", "width"), ("layers", "n_layers"), ("heads", "n_heads")):
        if given[option] and asked[field] != getattr(cfg, field):
            raise click.UsageError(f"--{option} {asked[field]} differs from the --init transformer's "
                                   f"{getattr(cfg, field)}; leave --{option} out to train that architecture")
    for field in ("n_codes", "grid", "clip_dim"):
        if asked[field] != getattr(cfg, field):
            raise click.UsageError(f"the --init transformer has {field} {getattr(cfg, field)}, but the VQGAN and CLIP "
                                   f"of this run need {asked[field]}")
    return state, dataclasses.replace(cfg, dropout=asked["dropout"],
                                      null_condition=asked["null_condition"] or cfg.null_condition)


def _hidden_alias(command: click.Command) -> click.Command:
    """The same command under an older spelling, left out of --help."""
    alias = copy.copy(command)
    alias.hidden = True
    return alias


# The spellings before `studio clip-gen train vqgan|transformer`, kept for scripts that use them.
clip_gen_group.add_command(_hidden_alias(train_vqgan_command), name="train-vqgan")
clip_gen_group.add_command(_hidden_alias(train_transformer_command), name="train-transformer")


def _clip_weight(_ctx, param, value):
    """--claims-clip-weight checked as model.json's weight is (a usage error here, before any work)."""
    from .model_dir import checked_clip_weight

    if value is None:
        return None
    try:
        return checked_clip_weight(value, "the weight")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _assemble(dest: Path, vqgan, vqgan_config, transformer, clip_file, clip_arch, rerank_clip, rerank_clip_arch,
              claims, claims_clip_weight, heads, force, share_installed_clip: bool = False) -> dict:
    from .checkpoints import WeightsError
    from .model_dir import assemble

    if rerank_clip_arch and rerank_clip is None:
        raise click.UsageError("--rerank-clip-arch names the architecture of --rerank-clip FILE: give the file too")
    if claims_clip_weight is not None and claims is None:
        raise click.UsageError("--claims-clip-weight weighs the CLIP beside --claims FILE: give the file too")
    source = {"vqgan": vqgan.name, "transformer": transformer.name, "clip": clip_file.name}
    if rerank_clip is not None:
        source["rerank"] = rerank_clip.name
    if claims is not None:
        source["claims"] = claims.name
    try:
        return assemble(dest, vqgan=vqgan, transformer=transformer, clip=clip_file, vqgan_config=vqgan_config,
                        clip_arch=clip_arch, rerank_clip=rerank_clip, rerank_clip_arch=rerank_clip_arch, heads=heads,
                        claims=claims, claims_clip_weight=claims_clip_weight or 0.0, overwrite=force,
                        share_installed_clip=share_installed_clip, source=source)
    except (WeightsError, ValueError, OSError) as exc:
        raise _fail(exc) from None


_PARTS = [
    click.option("--vqgan", type=_FILE, help="VQGAN: taming .ckpt, clip-gen .pt or vqgan.safetensors."),
    click.option("--vqgan-config", type=_FILE, help="taming yaml (default: taming's f16 network)."),
    click.option("--transformer", type=_FILE, help="clip-gen GPT .pt or transformer.safetensors."),
    click.option("--clip", "clip_file", type=_FILE,
                 help="CLIP weights (open_clip file or Studio's small-CLIP format) [default: Studio's bundled CLIP]."),
    click.option("--clip-arch", help="open_clip architecture of --clip, e.g. ViT-B-32."),
    click.option("--rerank-clip", type=_FILE,
                 help="A second CLIP that scores the candidates (e.g. one trained harder on the same data) "
                      "[default: the conditioning CLIP]."),
    click.option("--rerank-clip-arch", help="open_clip architecture of --rerank-clip."),
    click.option("--claims", type=_FILE,
                 help="A claims classifier (studio.ml.claims) that also scores the candidates of prompts in the "
                      "shapes grammar [default: none]."),
    click.option("--claims-clip-weight", type=float, metavar="W", callback=_clip_weight,
                 help="With --claims: candidates of prompts in the shapes grammar rank by the classifier's score "
                      "plus W times the re-ranking CLIP's (the conditioning CLIP's without --rerank-clip), each "
                      "standardised over the candidates; other prompts rank by the CLIP alone [default: 0, the "
                      "classifier alone; folders made before this option sum the two, W=1]."),
    click.option("--heads", type=click.IntRange(1), help="Attention heads of a clip-gen GPT (default width/64)."),
    click.option("--force", is_flag=True, help="Replace an existing model of that name."),
]


def _with_parts(func):
    for option in reversed(_PARTS):
        func = option(func)
    return func


def run_parts(run_folder: Path | None, vqgan, vqgan_config, transformer, clip_file, clip_arch) -> tuple:
    """The parts of a model: from a finished transformer training run (its ``model_card.json`` names
    the VQGAN and the CLIP it was trained with), with any part given as an option winning."""
    if run_folder is not None:
        card_path = run_folder / RUN_CARD
        try:
            card = json.loads(card_path.read_text())
        except FileNotFoundError:
            raise click.ClickException(f"{run_folder}: no {RUN_CARD} (is the training run finished?)") from None
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{card_path}: unreadable ({exc})") from None
        if card.get("stage") != "transformer":
            raise click.ClickException(f"{run_folder}: not a transformer training run (stage "
                                       f"{card.get('stage')!r}); import the run of `studio clip-gen train transformer`")

        def existing(value, what: str) -> Path | None:
            if not value:
                return None
            path = Path(value)
            if not path.is_file():
                raise click.ClickException(f"the run's {what} file {path} is missing; give --{what} FILE")
            return path

        transformer = transformer or existing(run_folder / "transformer.safetensors", "transformer")
        if vqgan is None:
            vqgan = existing(card["vqgan"]["file"], "vqgan")
            vqgan_config = vqgan_config or existing(card["vqgan"].get("config"), "vqgan-config")
        if clip_file is None:
            clip_file = existing(card["clip"]["file"], "clip")
            clip_arch = clip_arch or card["clip"].get("arch")
    for value, option in ((vqgan, "--vqgan"), (transformer, "--transformer")):
        if value is None:
            raise click.UsageError(f"give a training run folder or {option} FILE")
    return vqgan, vqgan_config, transformer, _clip_or_bundled(clip_file), clip_arch


@click.command(name="clip-gen")
@click.argument("name")
@click.argument("run_folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@_with_parts
def import_command(name, run_folder, vqgan, vqgan_config, transformer, clip_file, clip_arch, rerank_clip, rerank_clip_arch,
                   claims, claims_clip_weight, heads, force) -> None:
    """Import a CLIP-GEN model from local files as model id clip-gen/NAME.

    Give a finished `studio clip-gen train transformer` run folder as RUN_FOLDER (its model card
    names the VQGAN and the CLIP), or the parts with --vqgan, --transformer and --clip.
    """
    from .plugin import imported_root

    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise click.ClickException(f"model name {name!r}: use letters, digits, '-', '_' or '.'")
    root = imported_root()
    if root is None:
        raise click.ClickException("cannot read Studio's settings (see `studio config`)")
    vqgan, vqgan_config, transformer, clip_file, clip_arch = run_parts(run_folder, vqgan, vqgan_config, transformer,
                                                                       clip_file, clip_arch)
    summary = _assemble(root / name, vqgan, vqgan_config, transformer, clip_file, clip_arch, rerank_clip,
                        rerank_clip_arch, claims, claims_clip_weight, heads, force)
    click.echo(f"imported clip-gen/{name} ({summary['resolution']}px, {summary['grid']}x{summary['grid']} tokens) "
               f"weights sha256 {summary['weights_sha256'][:16]}")


def _key_value(item: str, option: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise click.UsageError(f"{option} takes KEY=VALUE, got {item!r}")
    return key.strip(), value


@clip_gen_group.command(name="package")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@_with_parts
@click.option("--eval-n", type=click.IntRange(0), default=0, show_default=True,
              help="Score the packaged model on this many held-out prompts into model_card.json (0: no card).")
@click.option("--dataset", type=click.Choice(["shapes", "emoji"]), default="shapes", show_default=True,
              help="What the model was trained on: the card's held-out data, measures and vocabulary.")
@click.option("--candidates", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Re-ranking width of the card's second evaluation.")
@click.option("--guidance", type=click.FloatRange(0, 20), default=1.0, show_default=True,
              help="The model's default guidance, used by the card's evaluations (a transformer trained with --cond-drop).")
@click.option("--default", "sampling", multiple=True, metavar="KEY=VALUE",
              help="Another default of the model's token sampling, used by the card's evaluations too: "
                   "temperature, top_k or top_p (repeatable), e.g. --default top_k=20.")
def package_command(out_dir, vqgan, vqgan_config, transformer, clip_file, clip_arch, rerank_clip, rerank_clip_arch,
                    claims, claims_clip_weight, heads, force, eval_n, dataset, candidates, guidance, sampling) -> None:
    """Write a model folder (as bundled in studio_clip_gen/weights) from trained parts.

    With --eval-n the folder gets a model card: VQGAN PSNR and codebook usage, and `studio eval`
    numbers without and with re-ranking (shapes: the pixel judge; emoji: concept accuracy by the
    model's own CLIP and by pixels), the vocabulary, what it draws and its licence, all measured
    on the packaged files.
    """
    if (guidance != 1.0 or sampling) and not eval_n:
        raise click.UsageError("--guidance and --default set defaults the model card records: give --eval-n too")
    from .card import check_sampling

    pairs = [_key_value(item, "--default") for item in sampling]
    keys = [key for key, _ in pairs]
    if "guidance" in keys:
        raise click.UsageError("the default guidance is set with --guidance G, not --default")
    if len(set(keys)) < len(keys):
        raise click.UsageError(f"--default sets each key once; given twice: {sorted({k for k in keys if keys.count(k) > 1})[0]}")
    try:
        defaults = check_sampling(dict(pairs))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    vqgan, vqgan_config, transformer, clip_file, clip_arch = run_parts(None, vqgan, vqgan_config, transformer,
                                                                       clip_file, clip_arch)
    from .card import known_records

    # records of the parts' cards for the new card, read before the destination (maybe one of those
    # folders) is replaced
    known = known_records({"vqgan": vqgan, "transformer": transformer}, out_dir if force else None) if eval_n else {}
    summary = _assemble(out_dir, vqgan, vqgan_config, transformer, clip_file, clip_arch, rerank_clip, rerank_clip_arch,
                        claims, claims_clip_weight, heads, force, share_installed_clip=True)
    if eval_n:
        from rich.console import Console
        from rich.progress import Progress

        from .card import write_card

        with Progress(console=Console(stderr=True), transient=True) as bar:
            tasks: dict[str, int] = {}

            def progress(label: str, done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bar.add_task(f"eval {label}", total=total)
                bar.update(tasks[label], completed=done)

            try:
                summary["card"] = write_card(out_dir, eval_n=eval_n, candidates=candidates, guidance=guidance,
                                             sources={"vqgan": vqgan, "transformer": transformer}, progress=progress,
                                             dataset=dataset, sampling=defaults, known=known)
            except ValueError as exc:
                raise _fail(exc) from None
    click.echo(json.dumps(summary, indent=2))
