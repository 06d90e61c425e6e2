"""Contrastive training of Studio's small CLIP, resumable, with held-out zero-shot evaluation.

Loss. On a folder dataset (content unknown) it is open_clip's ``ClipLoss``. On ``shapes`` the
content of every image and the claim of every caption are known, which allows two things a
plain CLIP loss cannot do:

* exact positives: with 8 colours and 4 shapes a batch of 128 holds many captions that are
  true of several images ("a red circle"); ``ClipLoss`` would push those apart. Here every
  (image, caption) pair that is true counts as a positive (soft targets), the same loss
  otherwise;
* hard negatives: for each caption, captions that differ only in the relation, the order of
  the objects or one attribute (:func:`studio.ml.shapes.hard_negatives`) are added as extra
  text columns, plus a small softmax per image over its caption and its own negatives
  (weight ``hard_negative_weight``). Without them a text encoder can ignore word order and
  "A left of B" and "A right of B" end up with the same embedding;
* optionally (``probe_weight``), one linear probe shared by both towers that must read the
  colour and shape of the left/top object, of the other one, and the relation's axis from the
  image embedding and from the caption embedding (:func:`attribute_probe_loss`).
* optionally (``distractor_weight``), image-side negatives: each caption against its own image
  and the same image with one outline redrawn as another shape or as one no caption names (or,
  a share ``distractor_resize`` of those for captions naming sizes, one object drawn at the other
  size) (:func:`distractor_loss`), with ``blur`` softening half of each batch. This is the training of
  a CLIP that re-ranks a generator's candidates: one trained on clean drawings alone accepts a
  soft blob as any shape.

Run directory layout (``out_dir``)::

    checkpoint/model.safetensors   fp32 weights (plain state dict)
    checkpoint/train_state.pt      step, wall time, config, optimizer (torch.save; read with weights_only=True)
    best/...                       the same for the best held-out score so far
    metrics.jsonl                  one JSON object per log line (training and evaluation)
    model_card.md, model_card.json data, steps, wall time, hardware, evaluation numbers

Checkpoints are written to a temporary folder and renamed, so a killed run never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

from studio.ml import shapes
from studio.plumbing import append_jsonl, atomic_dir, hardware, load_checkpoint, one_line
from studio.ml.clip_configs import CONFIGS, DEFAULT_CONFIG, create_small_clip, get_tokenizer
from studio.ml.precision import autocast, check_training
from studio.ml.clip_features import to_clip_input
from studio.ml.datasets import claim_caption, collate, open_dataset

CHECKPOINT = "checkpoint"
BEST = "best"
WEIGHTS = "model.safetensors"
STATE = "train_state.pt"


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in the checkpoint and the model card."""

    dataset: str = "shapes"
    model: str = DEFAULT_CONFIG
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    schedule: str = "constant"  # constant after warm-up: runs are open-ended and resumable
    hard_negatives: int = 4
    single_object_negatives: int = 1  # one-object captions are easy; their negatives cost text passes
    hard_negative_weight: float = 1.0
    probe_weight: float = 0.0  # shared attribute probe on both towers (see attribute_probe_loss)
    two_object_share: float = 0.7  # relations are the hard part: more two-object scenes
    noise: float = 0.03  # max std of Gaussian pixel noise: generators' images are not clean
    distractor_weight: float = 0.0  # image-side negatives per caption (see distractor_loss); 0: none
    blur: float = 0.0  # max Gaussian blur sigma (px) for half of each batch, distractors alike; 0: none
    distractor_resize: float = 0.0  # share of distractors drawn at the other size instead (see distractor_scene)
    render: str | None = None  # what ``image_transform`` did to the training images (train_clip's argument)
    seed: int = 0
    log_every: int = 10
    eval_every_s: float = 180.0
    checkpoint_every_s: float = 180.0
    eval_n: int = 256
    threads: int = 2
    precision: str = "fp32"  # "bf16": mixed precision (studio.ml.precision)
    init: str | None = None  # a new run started from these weights (an exported CLIP file)


# ---- loss -------------------------------------------------------------------------------------


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a target distribution per row (rows of ``targets`` sum to 1)."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def truth_matrix(scenes: list[shapes.Scene], captions_: list[shapes.Caption]) -> torch.Tensor:
    """``[len(scenes), len(captions_)]`` bool: is caption j true of scene i (exactly)."""
    index: dict[tuple, int] = {}
    col = np.array([index.setdefault(c.key(), len(index)) for c in captions_])
    rows = np.zeros((len(scenes), len(col)), dtype=bool)
    for i, scene in enumerate(scenes):
        keys = [index[k] for k in {c.key() for c in shapes.captions(scene)} if k in index]
        if keys:
            rows[i] = np.isin(col, keys)
    return torch.from_numpy(rows)


def shapes_loss(img: torch.Tensor, txt: torch.Tensor, neg: torch.Tensor, truth: torch.Tensor, scale: torch.Tensor,
                k: int, hard_weight: float) -> tuple[torch.Tensor, dict]:
    """The multi-positive CLIP loss with hard-negative text columns (see module docstring).

    ``img [B,D]``, ``txt [B,D]`` (caption b describes image b), ``neg [B*K,D]`` (negatives of
    caption b at rows b*K..b*K+K-1), all unit-norm; ``truth [B, B+B*K]``.
    """
    b = img.shape[0]
    columns = torch.cat([txt, neg]) if neg.numel() else txt
    logits = scale * img @ columns.T  # [B, B+BK]
    t = truth.to(logits.dtype)
    i2t = soft_cross_entropy(logits, t / t.sum(dim=1, keepdim=True))
    tt = t[:, :b].T  # [B texts, B images]
    t2i = soft_cross_entropy(logits[:, :b].T, tt / tt.sum(dim=1, keepdim=True))
    loss = 0.5 * (i2t + t2i)
    parts = {"i2t": i2t.item(), "t2i": t2i.item()}
    if k and hard_weight:
        own = logits[:, :b].diagonal().unsqueeze(1)
        hard = logits[:, b:].reshape(b, b, k)[torch.arange(b), torch.arange(b)]  # image b vs its own negatives
        local = F.cross_entropy(torch.cat([own, hard], dim=1), torch.zeros(b, dtype=torch.long, device=img.device))
        loss = loss + hard_weight * local
        parts["hard"] = local.item()
        parts["hard_acc"] = (hard.max(dim=1).values < own.squeeze(1)).float().mean().item()
    return loss, parts


def distractor_loss(txt: torch.Tensor, img: torch.Tensor, distractors: torch.Tensor, scale: torch.Tensor,
                    valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Each caption against its own image and that image with one object changed (outline or size).

    ``txt [B,D]``, ``img [B,D]`` (image b is what caption b describes), ``distractors [B,D]``
    (image b redrawn by :func:`studio.ml.shapes.distractor_scene`), ``valid [B]`` (rows to use).
    A two-way softmax per caption: the contrastive loss alone never shows a caption two images
    that differ only in an outline, so it can rank a blob as high as the shape it was asked for,
    which is exactly the choice a re-ranking CLIP has to make among a generator's candidates.
    """
    own = (scale * txt * img).sum(dim=-1)
    other = (scale * txt * distractors).sum(dim=-1)
    logits = torch.stack([own, other], dim=1)[valid]
    if not len(logits):
        return logits.sum(), {}
    loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
    return loss, {"distract": loss.item(), "distract_acc": (logits[:, 0] > logits[:, 1]).float().mean().item()}


def blur_some(images: torch.Tensor, sigma_max: float, gen: torch.Generator, groups: int = 1) -> torch.Tensor:
    """Half of ``images`` (chosen at random) blurred with one random sigma in ``(0, sigma_max]``:
    generated images have soft edges, and the outline must be read through them. With
    ``groups`` > 1 the batch is that many equal parts whose image ``i`` is blurred alike (an
    image and its distractor: sharpness must not tell them apart)."""
    if sigma_max <= 0:
        return images
    sigma = float(torch.rand((), generator=gen)) * sigma_max + 1e-3
    chosen = (torch.rand(images.shape[0] // groups, generator=gen) < 0.5).repeat(groups)
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.device)
    c = images.shape[1]
    blurred = F.pad(images, (radius,) * 4, mode="replicate")
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return torch.where(chosen.view(-1, 1, 1, 1).to(images.device), blurred, images)


def _distractor_images(batch: dict, step: int, config: TrainConfig, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image b of the batch with one object changed, and which rows' captions are false of it."""
    from studio.ml.datasets import ImageTransform

    rng = np.random.default_rng([config.seed, step, 11])
    transform = ImageTransform(size)
    images, valid = [], []
    for attrs in batch["attrs"]:
        scene = shapes.scene_from_attrs(attrs)
        caption = claim_caption(attrs["claim"])
        sized = any(named for _colour, _shape, named in caption.objects)
        # a caption that names no size is true of its scene at any size: only sized ones get resized distractors
        changed = shapes.distractor_scene(scene, rng, resize_share=config.distractor_resize if sized else 0.0)
        images.append(transform(shapes.render_scene(changed, off_class=True)))
        valid.append(not shapes.caption_is_true(caption, changed))
    return torch.stack(images), torch.tensor(valid)


# ---- shared attribute probe ------------------------------------------------------------------

#: Heads of the probe: first/second object's colour and shape (in the canonical order of the
#: caption's claim, "X left of Y" / "X above Y") and the axis of the relation.
PROBE_HEADS = (("colour0", shapes.COLOURS), ("shape0", shapes.SHAPES), ("colour1", shapes.COLOURS),
               ("shape1", shapes.SHAPES), ("axis", ("horizontal", "vertical")))
IGNORE = -100


def probe_targets(captions_: list[shapes.Caption]) -> torch.Tensor:
    """``[B, heads]`` class indices (``IGNORE`` where the caption has no such thing)."""
    rows = []
    for c in captions_:
        objs, rel, _ = c.key()
        row = [shapes.COLOURS.index(objs[0][0]), shapes.SHAPES.index(objs[0][1]), IGNORE, IGNORE, IGNORE]
        if rel is not None:
            row[2:] = [shapes.COLOURS.index(objs[1][0]), shapes.SHAPES.index(objs[1][1]), 0 if rel == "left of" else 1]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def make_probe(embed_dim: int) -> torch.nn.Linear:
    return torch.nn.Linear(embed_dim, sum(len(classes) for _, classes in PROBE_HEADS))


def attribute_probe_loss(probe: torch.nn.Linear, img: torch.Tensor, txt: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ONE linear probe applied to the image and to the caption embeddings.

    Why: relations fail by a chicken-and-egg problem. The text tower has no reason to encode
    word order while images do not encode where each colour is, and vice versa, so both stay
    order-blind (the spec's prototype: "A left of B" and "A right of B" at cosine 0.998+). A
    probe shared by both towers asks each to put "which colour is left/top" on the same
    linear directions, which the contrastive loss can then align. Used in training only;
    the exported model is a plain open_clip CLIP.
    """
    scale = img.shape[-1] ** 0.5  # unit-norm embeddings: give the probe inputs of unit variance
    total = img.new_zeros(())
    for features in (img, txt):
        logits = probe(features * scale)
        start = 0
        for h, (_, classes) in enumerate(PROBE_HEADS):
            part = logits[:, start:start + len(classes)]
            start += len(classes)
            if (targets[:, h] != IGNORE).any():
                total = total + F.cross_entropy(part, targets[:, h], ignore_index=IGNORE)
    return total / (2 * len(PROBE_HEADS))


# ---- text encoding ----------------------------------------------------------------------------


def encode_text_trimmed(model, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``model.encode_text`` computed on the first L positions only (L: longest caption).

    Exact for open_clip's causal text tower with end-of-text pooling: a position never attends
    to later ones, so the padding after the end token cannot change the pooled feature. Short
    captions in a 32-token context make this about twice as fast.
    """
    if getattr(model, "text_pool_type", "argmax") != "argmax" or model.attn_mask is None:
        return model.encode_text(tokens, normalize=normalize)
    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def encode_images(model, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Images in [-1,1] (the dataset range) -> CLIP embedding, mapped once to CLIP's input."""
    return model.encode_image(to_clip_input(images, model, mapping="clean"), normalize=normalize)


# ---- checkpoints ------------------------------------------------------------------------------


def save_checkpoint(folder: Path, model, optimizer, state: dict) -> None:
    """Write weights + training state to ``folder`` atomically (temp folder, then rename)."""
    from studio.plumbing import safetensors_bytes

    with atomic_dir(folder) as tmp:
        (tmp / WEIGHTS).write_bytes(safetensors_bytes(model.state_dict(),
                                                      {"config_name": state["config"]["model"], "step": str(state["step"])}))
        torch.save({**state, "optimizer": optimizer.state_dict() if optimizer is not None else None}, tmp / STATE)


def initial_clip(path: str | Path, config_name: str) -> tuple[torch.nn.Module, list[int]]:
    """The weights a new run starts from, and the token ids whose rows they trained: a CLIP
    exported with `studio train export-clip` (the only form a trained CLIP outlives its run folder
    in). Rows the file dropped start as its mean row; the optimiser starts afresh, with the warm-up."""
    from studio.ml.clip_configs import _IDS_KEY, load_bundled_clip

    def unreadable(reason: str) -> ValueError:
        return ValueError(f"--init {path}: not an exported Studio CLIP ({reason})")

    try:
        with safe_open(str(path), framework="pt") as f:
            name = (f.metadata() or {}).get("config_name")
            ids = f.get_tensor(_IDS_KEY).tolist() if _IDS_KEY in f.keys() else []
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise unreadable(one_line(exc)) from None
    if name not in CONFIGS:
        raise unreadable(f"architecture {name!r} unknown to this Studio")
    if name != config_name:
        raise ValueError(f"--init {path} holds a {name} CLIP; train it with --model {name}")
    try:
        model = load_bundled_clip(path)
    except Exception as exc:  # noqa: BLE001
        raise unreadable(one_line(exc)) from None
    return model.float().train(), ids


def read_train_state(folder: Path) -> dict:
    return load_checkpoint(Path(folder) / STATE)


def load_checkpoint_model(path: str | Path):
    """``(model, config_name, state)`` from a run directory or a checkpoint folder."""
    from safetensors.torch import load_file

    path = Path(path)
    folder = path / CHECKPOINT if (path / CHECKPOINT / WEIGHTS).is_file() else path
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"no CLIP checkpoint in {path}")
    state = read_train_state(folder) if (folder / STATE).is_file() else {}
    name = state.get("config", {}).get("model", DEFAULT_CONFIG)
    model = create_small_clip(name)
    model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    state.pop("optimizer", None)
    return model.eval(), name, state


# ---- logging and the model card ---------------------------------------------------------------


def write_model_card(out_dir: Path, config: TrainConfig, state: dict, evaluation: dict | None) -> None:
    """Markdown + JSON next to the weights: what it was trained on, how long, how good."""
    card = {
        "model": "Studio small CLIP",
        "architecture": config.model,
        "open_clip_config": CONFIGS.get(config.model),
        "tokenizer": "open_clip SimpleTokenizer, context 32",
        "data": config.dataset + (" (procedural, generated from seeds; train split only)" if config.dataset == "shapes" else ""),
        "steps": state["step"],
        "samples_seen": state["step"] * config.batch_size,
        "wall_time_s": round(state["elapsed"], 1),
        "hardware": hardware(),
        "training": dataclasses.asdict(config),
        "evaluation": evaluation,
        "evaluation_data": ("emoji held-out phrasings: each prompt ranks the concepts by their best-matching picture"
                            if config.dataset == "emoji" else
                            "shapes eval split (never used in training), zero-shot from text prompts"),
    }
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=2))
    lines = [
        f"# Studio small CLIP ({config.model})",
        "",
        f"- Data: {card['data']}",
        f"- Steps: {state['step']} x batch {config.batch_size} ({card['samples_seen']} samples)",
        f"- Wall time: {state['elapsed'] / 60:.1f} min on {card['hardware']['cpu']} ({card['hardware']['cores']} cores), torch {torch.__version__}",
        f"- Loss: multi-positive contrastive + {config.hard_negatives} hard negative captions per caption "
        f"(weight {config.hard_negative_weight}), AdamW lr {config.lr}, {config.schedule} schedule",
        "",
        "## Held-out zero-shot evaluation",
        "",
    ]
    if evaluation:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in evaluation.items()]
    else:
        lines.append("not evaluated yet")
    (out_dir / "model_card.md").write_text("\n".join(lines) + "\n")


# ---- the loop ---------------------------------------------------------------------------------


def _lr_at(step: int, config: TrainConfig, total: int | None) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "cosine" and total:
        progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr


def _make_optimizer(model, config: TrainConfig):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98), eps=1e-6,
    )


def _shapes_text_batch(batch: dict, step: int, config: TrainConfig):
    """Positive captions, their hard negatives, the scenes and the truth matrix of one batch."""
    rng = np.random.default_rng([config.seed, step, 7])
    captions_ = [claim_caption(a["claim"]) for a in batch["attrs"]]
    scenes = [shapes.scene_from_attrs(a) for a in batch["attrs"]]
    negatives = []
    for c in captions_ if config.hard_negatives else ():
        count = config.hard_negatives if c.relation else max(1, min(config.hard_negatives, config.single_object_negatives))
        negs = shapes.hard_negatives(c, rng, count)
        # Padding repeats a negative (encoded once: texts are de-duplicated before the text tower).
        negatives += negs + [negs[-1]] * (config.hard_negatives - len(negs))
    truth = truth_matrix(scenes, captions_ + negatives)
    return captions_, negatives, truth


def _progress_bar(total_steps: int | None, seconds: float | None, start_step: int):
    """A rich progress bar on a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("train clip"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    task = bar.add_task("", total=total_steps or seconds, completed=start_step if total_steps else 0)
    return bar, task


def train_clip(
    out_dir: str | Path,
    dataset: str = "shapes",
    minutes: float | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 5e-4,
    resume: bool = False,
    progress: Callable[[dict], None] | None = None,
    image_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    **options,
) -> dict:
    """Train (or continue training) a small CLIP; returns a summary with the last evaluation.

    ``image_transform``: applied (without gradients) to every training image batch, distractors
    included, before blur and noise, e.g. a VQGAN's encode-decode round trip, so that a CLIP
    that is to judge a generator's pictures learns to read shapes in that generator's rendering.
    Name it in the ``render`` option, which the card records (a function cannot be saved).

    Stops after ``minutes`` of wall time in this call or when the step counter reaches
    ``steps`` (total, counting resumed steps), whichever comes first; at least one is needed.
    ``options`` override :class:`TrainConfig` fields (``model``, ``hard_negatives``, ...).
    ``progress``: called with a dict of metrics every ``log_every`` steps; when None and
    stderr is a terminal, a rich progress bar is shown.
    """
    if minutes is None and steps is None:
        raise ValueError("give minutes or steps")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(dataset=dataset, batch_size=batch_size, lr=lr, **options)
    torch.set_num_threads(config.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_training(str(device), config.precision)

    state = {"step": 0, "elapsed": 0.0, "config": dataclasses.asdict(config), "best_score": -1.0, "last_eval": None}
    ckpt = out_dir / CHECKPOINT
    if resume and (ckpt / WEIGHTS).is_file():
        if options.get("init"):
            raise ValueError(f"{out_dir} holds a run to resume; --init starts a new one (use another --out)")
        saved = read_train_state(ckpt)
        # The architecture is the checkpoint's; everything else may be changed on resume.
        config = TrainConfig(**{**saved["config"], "batch_size": batch_size, "lr": lr, **options, "dataset": dataset,
                                "model": saved["config"]["model"]})
        model, _, _ = load_checkpoint_model(ckpt)
        optimizer = _make_optimizer(model.to(device), config)
        if saved.get("optimizer"):
            optimizer.load_state_dict(saved["optimizer"])
        state.update({k: saved[k] for k in ("step", "elapsed", "best_score", "last_eval") if k in saved})
        state["config"] = dataclasses.asdict(config)
        state["_seen"] = set(saved.get("token_ids") or ())
    else:
        saved = {}
        torch.manual_seed(config.seed)
        if config.init:
            model, kept = initial_clip(config.init, config.model)
            state["_seen"] = set(kept)  # the rows the earlier run trained
        else:
            model, state["_seen"] = create_small_clip(config.model), set()
        model = model.to(device)
        optimizer = _make_optimizer(model, config)
    if (config.render is None) != (image_transform is None):
        if resume and image_transform is None:
            raise ValueError(f"{out_dir} trains on images rendered by {config.render}: resume it with that image_transform")
        raise ValueError("an image_transform needs a render name for the card, and a render name its image_transform")
    if config.distractor_weight and dataset != "shapes":
        raise ValueError("distractors redraw shapes scenes: --distractor-weight needs --dataset shapes")
    if not 0 <= config.distractor_resize <= 1:
        raise ValueError(f"distractor_resize is a share: 0 to 1, got {config.distractor_resize}")
    if config.distractor_resize and not config.distractor_weight:
        raise ValueError("--distractor-resize chooses among distractors: it needs --distractor-weight")
    model.train()
    probe = probe_optimizer = None
    if config.probe_weight and dataset == "shapes":
        probe = make_probe(CONFIGS[config.model]["embed_dim"]).to(device)
        probe_optimizer = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=0.0)
        if saved.get("probe"):
            probe.load_state_dict(saved["probe"])
            probe_optimizer.load_state_dict(saved["probe_optimizer"])
    state["_probe"] = (probe, probe_optimizer)
    plain_tokenizer, seen = get_tokenizer(config.model), state["_seen"]

    def tokenizer(texts):
        """Tokenise and remember which ids the run trains: the token rows an export keeps."""
        tokens = plain_tokenizer(texts)
        seen.update(torch.unique(tokens).tolist())
        return tokens

    is_shapes = dataset == "shapes"
    judged = dataset in ("shapes", "emoji")  # the datasets with a held-out measure (see held_out_score)
    data = open_dataset(dataset, size=CONFIGS[config.model]["vision_cfg"]["image_size"],
                        **({"two_object_share": config.two_object_share, "seed": config.seed} if is_shapes else {}))
    clip_loss = None
    if not is_shapes:
        from open_clip.loss import ClipLoss

        clip_loss = ClipLoss()

    metrics_path = out_dir / "metrics.jsonl"
    start_step, start_time = state["step"], time.monotonic()
    state["_elapsed_base"] = state["elapsed"]  # wall time of earlier runs; saved elapsed adds this run's
    deadline = start_time + minutes * 60 if minutes is not None else None
    last_ckpt = last_eval = start_time
    bar = _progress_bar(steps, minutes * 60 if minutes else None, start_step) if progress is None else None
    if bar:
        bar[0].start()
    append_jsonl(metrics_path, {"event": "start", "step": state["step"], "config": dataclasses.asdict(config),
                                 "hardware": hardware(), "time": time.time()})
    gen = torch.Generator().manual_seed(config.seed)
    window_t, window_steps, loss_avg = time.monotonic(), 0, None
    try:
        while True:
            now = time.monotonic()
            if (steps is not None and state["step"] >= steps) or (deadline is not None and now >= deadline):
                break
            step = state["step"]
            n = len(data)
            indices = [(step * config.batch_size + i) % n for i in range(config.batch_size)]
            if not is_shapes:
                indices = torch.randint(n, (config.batch_size,), generator=gen).tolist()
            batch = collate([data[i] for i in indices])
            images = batch["image"].to(device)
            distract = is_shapes and config.distractor_weight > 0
            groups = 2 if distract else 1  # an image and its distractor get the same blur and noise level
            if distract:
                others, valid = _distractor_images(batch, step, config, images.shape[-1])
                images = torch.cat([images, others.to(device)])
            if image_transform is not None:
                with torch.no_grad():
                    images = image_transform(images).clamp(-1, 1)
            images = blur_some(images, config.blur, gen, groups)
            if config.noise:
                sigma = (torch.rand(images.shape[0] // groups, 1, 1, 1, generator=gen) * config.noise).repeat(groups, 1, 1, 1)
                images = images + sigma.to(device) * torch.randn(images.shape, generator=gen).to(device)
            for opt in (optimizer, probe_optimizer):
                for group in opt.param_groups if opt is not None else ():
                    group["lr"] = _lr_at(step, config, steps)

            with autocast(device, config.precision):
                img = encode_images(model, images).float()
            if distract:
                img, img_distractors = img[: len(valid)], img[len(valid):]
            scale = model.logit_scale.exp()
            if is_shapes:
                captions_, negatives, truth = _shapes_text_batch(batch, step, config)
                # Short captions repeat within a batch: encode each distinct text once.
                texts = [c.text for c in captions_ + negatives]
                distinct = list(dict.fromkeys(texts))
                where = {t: i for i, t in enumerate(distinct)}
                with autocast(device, config.precision):
                    txt_all = encode_text_trimmed(model, tokenizer(distinct).to(device)).float()
                txt_all = txt_all[torch.tensor([where[t] for t in texts], device=device)]
                b = len(captions_)
                loss, parts = shapes_loss(img, txt_all[:b], txt_all[b:], truth.to(device), scale,
                                          config.hard_negatives, config.hard_negative_weight)
                if distract:
                    aux, more = distractor_loss(txt_all[:b], img, img_distractors, scale, valid.to(device))
                    loss = loss + config.distractor_weight * aux
                    parts.update(more)
                if probe is not None:
                    aux = attribute_probe_loss(probe, img, txt_all[:b], probe_targets(captions_).to(device))
                    loss = loss + config.probe_weight * aux
                    parts["probe"] = aux.item()
            else:
                with autocast(device, config.precision):
                    txt = encode_text_trimmed(model, tokenizer(batch["caption"]).to(device)).float()
                loss = clip_loss(img, txt, scale)
                parts = {}
            optimizer.zero_grad(set_to_none=True)
            if probe_optimizer is not None:
                probe_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if probe_optimizer is not None:
                probe_optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            state["step"] += 1
            window_steps += 1
            loss_value = loss.item()
            loss_avg = loss_value if loss_avg is None else 0.9 * loss_avg + 0.1 * loss_value

            now = time.monotonic()
            if state["step"] % config.log_every == 0:
                rate = window_steps / max(1e-9, now - window_t)
                record = {"step": state["step"], "loss": round(loss_value, 4), "loss_avg": round(loss_avg, 4),
                          **{k: round(v, 4) for k, v in parts.items()}, "lr": optimizer.param_groups[0]["lr"],
                          "scale": round(scale.item(), 2), "steps_per_s": round(rate, 3),
                          "elapsed": round(state["_elapsed_base"] + now - start_time, 1)}
                append_jsonl(metrics_path, record)
                window_t, window_steps = now, 0
                if progress is not None:
                    progress(record)
                elif bar:
                    done = state["step"] if steps else now - start_time
                    bar[0].update(bar[1], completed=done, description=f"step {state['step']} loss {loss_avg:.3f} {rate:.2f} it/s")
            if judged and now - last_eval >= config.eval_every_s:
                _evaluate(model, config, state, metrics_path, out_dir, now - start_time)
                last_eval = time.monotonic()
            if now - last_ckpt >= config.checkpoint_every_s:
                _checkpoint(out_dir, model, optimizer, config, state, time.monotonic() - start_time)
                last_ckpt = time.monotonic()
    finally:
        if bar:
            bar[0].stop()
    run_time = time.monotonic() - start_time
    if judged and state["step"] > start_step:
        _evaluate(model, config, state, metrics_path, out_dir, run_time)
    _checkpoint(out_dir, model, optimizer, config, state, time.monotonic() - start_time)
    summary = {"out_dir": str(out_dir), "step": state["step"], "steps_this_run": state["step"] - start_step,
               "wall_time_s": round(state["elapsed"], 1), "run_time_s": round(run_time, 1),
               "steps_per_s": round((state["step"] - start_step) / max(run_time, 1e-9), 3),
               "loss": loss_avg, "evaluation": state["last_eval"], "best_score": state["best_score"]}
    append_jsonl(metrics_path, {"event": "end", **summary, "time": time.time()})
    return summary


def _with_elapsed(state: dict, since_start: float) -> dict:
    """State as it should be saved: ``elapsed`` counts wall time over all resumed runs."""
    state["elapsed"] = state["_elapsed_base"] + since_start
    saved = {k: v for k, v in state.items() if not k.startswith("_")}
    if "_seen" in state:
        saved["token_ids"] = sorted(state["_seen"])
    return saved


def _checkpoint(out_dir: Path, model, optimizer, config: TrainConfig, state: dict, since_start: float) -> None:
    saved = _with_elapsed(state, since_start)
    probe, probe_optimizer = state.get("_probe") or (None, None)
    if probe is not None:  # training-only head: kept in the training state, not in the weights
        saved["probe"] = probe.state_dict()
        saved["probe_optimizer"] = probe_optimizer.state_dict()
    save_checkpoint(out_dir / CHECKPOINT, model, optimizer, saved)
    write_model_card(out_dir, config, saved, state.get("last_eval"))


@functools.lru_cache(maxsize=2)
def _emoji_data(config_name: str):
    """Opened once per process: a run evaluates every few minutes and an export reads the texts
    twice, and each opening reads and checks the whole cache (seconds)."""
    from studio.ml.emoji_dataset import EmojiDataset

    return EmojiDataset(size=CONFIGS[config_name]["vision_cfg"]["image_size"]).data


def held_out_score(model, dataset: str, config_name: str, n: int = 256, text_encoder: Callable | None = None) -> dict:
    """The held-out figures a run on ``dataset`` is judged by (``score`` picks its best checkpoint):
    concept retrieval from held-out phrasings for ``emoji`` (shapes' probes would be meaningless
    there), the shapes zero-shot probes otherwise."""
    from studio.ml.zero_shot import evaluate_zero_shot

    if dataset == "emoji":
        from studio.ml.evaluate_emoji import zero_shot_concepts

        return zero_shot_concepts(model, _emoji_data(config_name), n=n, text_encoder=text_encoder)
    return evaluate_zero_shot(model, n=n, text_encoder=text_encoder)


def dataset_texts(dataset: str, config_name: str = DEFAULT_CONFIG) -> list[str]:
    """Every text a run on ``dataset`` trains or is evaluated on: which token rows an export of a
    run that did not record its token ids keeps (see ``export_bundled_clip``). Needs the data as
    it is now, so a run records the ids it trains instead."""
    if dataset == "emoji":
        data = _emoji_data(config_name)
        return data.captions("train") + data.captions("heldout")
    if dataset.startswith("folder:"):
        from studio.ml.folder import open_folder

        return [pair.caption for pair in open_folder(dataset.partition(":")[2], verify=False).pairs]
    return []  # shapes: its grammar is always kept


def _evaluate(model, config: TrainConfig, state: dict, metrics_path: Path, out_dir: Path, since_start: float) -> dict:
    """Held-out zero-shot numbers; keeps the best model (by their mean) under ``best/``."""
    model.eval()
    t = time.monotonic()
    result = held_out_score(model, config.dataset, config.model, n=config.eval_n, text_encoder=encode_text_trimmed)
    model.train()
    result["eval_s"] = round(time.monotonic() - t, 1)
    state["last_eval"] = result
    saved = _with_elapsed(state, since_start)
    append_jsonl(metrics_path, {"event": "eval", "step": state["step"], "elapsed": round(saved["elapsed"], 1), **result})
    score = result["score"]
    if score > state["best_score"]:
        state["best_score"] = score
        saved["best_score"] = score
        save_checkpoint(out_dir / BEST, model, None, saved)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.ml.train_clip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--model", default=DEFAULT_CONFIG, choices=sorted(CONFIGS))
    parser.add_argument("--hard-negatives", type=int, default=TrainConfig.hard_negatives)
    parser.add_argument("--hard-negative-weight", type=float, default=TrainConfig.hard_negative_weight)
    parser.add_argument("--probe-weight", type=float, default=TrainConfig.probe_weight)
    parser.add_argument("--distractor-weight", type=float, default=TrainConfig.distractor_weight)
    parser.add_argument("--blur", type=float, default=TrainConfig.blur)
    parser.add_argument("--distractor-resize", type=float,
                        help="share of the distractors of captions naming sizes drawn at the other size "
                             f"[default: {TrainConfig.distractor_resize}; a resumed run keeps its own]")
    parser.add_argument("--single-object-negatives", type=int, default=TrainConfig.single_object_negatives)
    parser.add_argument("--two-object-share", type=float, default=TrainConfig.two_object_share)
    parser.add_argument("--eval-every", type=float, default=TrainConfig.eval_every_s, help="seconds")
    parser.add_argument("--checkpoint-every", type=float, default=TrainConfig.checkpoint_every_s, help="seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args(argv)
    if args.minutes is None and args.steps is None:
        parser.error("give --minutes or --steps")
    summary = train_clip(
        args.out, dataset=args.dataset, minutes=args.minutes, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, resume=args.resume, model=args.model, hard_negatives=args.hard_negatives,
        hard_negative_weight=args.hard_negative_weight, probe_weight=args.probe_weight,
        distractor_weight=args.distractor_weight, blur=args.blur,
        **({"distractor_resize": args.distractor_resize} if args.distractor_resize is not None else {}),
        single_object_negatives=args.single_object_negatives, two_object_share=args.two_object_share,
        eval_every_s=args.eval_every, checkpoint_every_s=args.checkpoint_every, threads=args.threads,
        precision=args.precision,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
