"""Training GALIP with the official losses, at any size, on any captioned dataset.

One step, as the official code does it:

* D/C: hinge loss on real pairs ``relu(1 - C(D(real), s))``, on mismatched pairs (captions
  rolled by one within the batch) ``relu(1 + C(D(real), s_wrong))`` and on fakes
  ``relu(1 + C(D(fake), s))``; ``errD = real + (fake + mismatched) / 2 + MA-GP`` where MA-GP is
  ``2.0 * mean(||grad of C(D(real), s) w.r.t. (CLIP features, s)|| ** 6)``.
* G: ``-mean(C(D(fake), s)) - 4.0 * mean(cos(CLIP image embedding of fake, s))``.
* Adam, betas (0.0, 0.9), G lr 1e-4, D+C lr 4e-4; mixed precision on CUDA.

Optional, beyond the official recipe: a pixel-level conditional discriminator
(:class:`~studio_galip.model.NetP`, ``pixel_weight > 0``) with the same hinge terms (real,
mismatched, fake) added to errD and ``-pixel_weight * mean(P(fake, s))`` added to errG. D sees the
image only through CLIP's patch grid, which cannot tell a soft blob from a square at 64 px; P
reads the pixels. With ``aux_weight > 0`` (the ``shapes`` data only), P also carries an
auxiliary classifier of the caption's (colour, shape) and (colour, size) pairs
(:data:`studio.ml.shapes.CLAIM_CLASSES`, AC-GAN style): trained on real pictures only, its masked
binary cross-entropy (positives weighted up, :func:`studio.ml.claims.training_loss`) on the fakes
is added to errG, so G is told directly which shape it drew wrong rather than only that the
picture looks unlike the data. P reads a real batch once for the real and the mismatched captions
(before, twice: a run with ``pixel_weight`` now takes one spectral-norm power iteration per step
there instead of two, so it does not retrace an older run's steps exactly). ``init_g`` starts the
generator from a Studio weights file (a longer run that continues a shipped model with new
discriminators).

The CLIP features of a fake are computed once per step (CLIP is frozen, so the D step and
the G step see the same features; the official code computes them twice).

Small CLIPs need two changes (measured on the bundled ``shapes`` model): the sentence embedding
is unit-normalised and scaled by sqrt(dim) (``cond_scale="sqrt_dim"``), and G's lr is raised to
4e-4. :func:`default_config` and :func:`default_lr_g` apply them unless told otherwise.

Outputs in ``out_dir``: ``checkpoint.pt`` (official layout plus ``config``; resumable, atomic),
``metrics.jsonl``, ``samples/step_NNNNNN.png`` grids, and at the end ``galip.safetensors`` (Studio
format, generator only) with ``model_card.json``.
"""

from __future__ import annotations

import json
import math
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from studio.ml.claims import training_loss
from studio.ml.clip_features import image_features, sentence_embedding, to_clip_input, tokenize_for
from studio.ml.precision import autocast, check_training
from studio.ml.shapes import CLAIM_CLASSES, claim_targets

from studio.api import WeightsError, atomic_path, restore_optimizer, sha256_file

from .checkpoints import load_into, read_official, read_weights, save_studio
from .generator import noise_for, to_uint8
from .model import GalipConfig, Nets, build_nets, condition

#: Generator/discriminator widths for small CLIPs (about 2.3M G and 0.9M D parameters for a
#: 128-wide, 8x8-grid CLIP at 64px).
SMALL_WIDTHS = dict(ngf=16, code_ch=32, mid_ch=16, d_ch=128, c_hidden=64)

OFFICIAL_LR_G = 1e-4
SMALL_LR_G = 4e-4
LR_D = 4e-4
BETAS = (0.0, 0.9)
SIM_WEIGHT = 4.0
GP_WEIGHT, GP_POWER = 2.0, 6


def is_official_clip(clip) -> bool:
    cfg = GalipConfig.for_clip(clip)
    return (cfg.clip_width, cfg.grid, cfg.clip_depth, cfg.cond_dim) == (768, 7, 12, 512)


def default_config(clip, **overrides) -> GalipConfig:
    """Official config for CLIP ViT-B/32; small widths and ``sqrt_dim`` conditions otherwise."""
    if is_official_clip(clip):
        return GalipConfig.for_clip(clip, **overrides)
    return GalipConfig.for_clip(clip, **{**SMALL_WIDTHS, "cond_scale": "sqrt_dim", **overrides})


def default_lr_g(cfg: GalipConfig) -> float:
    """1e-4 as the official runs; 4e-4 (D's lr) when conditions are sqrt(dim)-scaled small CLIPs."""
    return OFFICIAL_LR_G if cfg.cond_scale == "raw" else SMALL_LR_G


@dataclass
class TrainOptions:
    steps: int | None = None  # total optimiser steps (a resumed run counts its earlier steps)
    minutes: float | None = None  # wall time of this call
    batch_size: int = 32
    lr_g: float | None = None  # None: default_lr_g(config)
    lr_d: float = LR_D
    sim_weight: float = SIM_WEIGHT
    pixel_weight: float = 0.0  # > 0: add the pixel discriminator NetP with this weight
    aux_weight: float = 0.0  # > 0 (with pixel_weight > 0, shapes data): P's auxiliary claim classifier
    init_g: str | None = None  # start G from this Studio weights file (ignored when resuming)
    flip: bool = False  # horizontal flips break "left of"/"right of" captions: off by default
    dataset_options: dict[str, Any] = field(default_factory=dict)  # for a named dataset's factory
    ema: float = 0.0  # > 0: keep an exponential moving average of G with this decay; the run ships it
    seed: int = 0
    # "fp16": the official mixed precision (autocast + loss scaling); "bf16": autocast without
    # scaling (fast on CPUs with AMX and on recent GPUs); "fp32"; None: fp16 on CUDA, else fp32
    precision: str | None = None
    sample_every: int = 200
    save_every_s: float = 300.0
    log_every: int = 10
    sample_prompts: Sequence[str] = ()
    device: str = "cpu"
    show_progress: bool = True
    meta: dict[str, Any] = field(default_factory=dict)  # recorded in checkpoints and the card


# ---- losses -----------------------------------------------------------------------------------


def hinge(pred: torch.Tensor, real: bool) -> torch.Tensor:
    return F.relu(1.0 - pred).mean() if real else F.relu(1.0 + pred).mean()


def ma_gp(feats: torch.Tensor, sent: torch.Tensor, pred: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Matching-aware gradient penalty on (CLIP features, sentence embedding) of real pairs.

    ``scale`` is the AMP loss scale: gradients are taken of the scaled prediction (so fp16 does
    not underflow) and unscaled before the norm, as the official mixed-precision variant.
    """
    grads = torch.autograd.grad(
        outputs=pred * scale, inputs=(feats, sent), grad_outputs=torch.ones_like(pred),
        retain_graph=True, create_graph=True,
    )
    grad = torch.cat([g.flatten(1) for g in grads], dim=1).float() / scale
    norm = grad.pow(2).sum(dim=1).sqrt()
    return GP_WEIGHT * norm.pow(GP_POWER).mean()


def mismatched(sent: torch.Tensor) -> torch.Tensor:
    """Captions rolled by one within the batch: every image paired with another's caption."""
    return torch.cat([sent[1:], sent[:1]], dim=0).detach()


def claim_batch(claims: Sequence[dict | None], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets, mask)`` [B, len(CLAIM_CLASSES)] from the items' caption claims."""
    if any(claim is None for claim in claims):
        raise ValueError("the auxiliary classifier needs captions of the shapes grammar (--dataset shapes)")
    pairs = [claim_targets(claim["objects"]) for claim in claims]
    targets = torch.stack([torch.from_numpy(t) for t, _ in pairs]).to(device)
    mask = torch.stack([torch.from_numpy(m) for _, m in pairs]).to(device)
    return targets, mask


def train_step(nets: Nets, opt_g, opt_d, real: torch.Tensor, captions: Sequence[str], opts: TrainOptions,
               scaler=None, generator: torch.Generator | None = None, precision: str = "fp32",
               claims: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """One D/C update then one G update; returns the loss terms. Mixed precision: ``precision``
    fp16 (with a ``scaler``) or bf16 (no scaler). ``claims``: :func:`claim_batch` targets for
    P's auxiliary classifier (needed when ``opts.aux_weight > 0``)."""
    cfg, clip, G, D, C = nets.cfg, nets.clip, nets.G, nets.D, nets.C
    device = real.device
    amp = scaler is not None
    if amp != (precision == "fp16"):
        raise ValueError("fp16 trains with a loss scaler, and only fp16 does")
    with torch.no_grad():
        sent_raw = sentence_embedding(clip, tokenize_for(clip, captions)).float()
        feats_real, _ = image_features(clip, to_clip_input(real, clip, cfg.mapping), cfg.taps)
    sent = condition(sent_raw, cfg.cond_scale).detach().requires_grad_()
    feats_real = feats_real.float().requires_grad_()

    noise = torch.randn(real.shape[0], cfg.nz, generator=generator, device="cpu").to(device)
    with autocast(device, precision):
        fake = G(noise, sent.detach())
    feats_fake, fake_emb = image_features(clip, to_clip_input(fake.float(), clip, cfg.mapping), cfg.taps)
    feats_fake, fake_emb = feats_fake.float(), fake_emb.float()

    # D and C
    with autocast(device, precision):
        real_out = D(feats_real)
        pred_real = C(real_out, sent)
        err_real = hinge(pred_real, real=True)
        err_mis = hinge(C(real_out, mismatched(sent)), real=False)
        err_fake = hinge(C(D(feats_fake.detach()), sent.detach()), real=False)
    gp = ma_gp(feats_real, sent, pred_real, scale=scaler.get_scale() if amp else 1.0)
    err_d = err_real + (err_fake + err_mis) / 2.0 + gp
    pixel = {}
    use_aux = nets.P is not None and opts.aux_weight > 0
    if use_aux and claims is None:
        raise ValueError("aux_weight > 0 needs the batch's claims")
    if nets.P is not None:
        s_fixed = sent.detach()
        with autocast(device, precision):
            h_real = nets.P.features(real)
            err_p = (hinge(nets.P.judge(h_real, s_fixed), real=True)
                     + (hinge(nets.P(fake.detach(), s_fixed), real=False)
                        + hinge(nets.P.judge(h_real, mismatched(sent)), real=False)) / 2.0)
            aux_real = nets.P.classify(h_real) if use_aux else None
        err_d = err_d + opts.pixel_weight * err_p
        pixel["errP"] = err_p.item()
        if use_aux:
            err_aux = training_loss(aux_real, *claims)
            err_d = err_d + opts.aux_weight * err_aux
            pixel["errP_aux"] = err_aux.item()
    opt_d.zero_grad(set_to_none=True)
    _backward_step(err_d, opt_d, scaler)

    # G
    with autocast(device, precision):
        adv = C(D(feats_fake), sent.detach()).mean()
        h_fake = nets.P.features(fake) if nets.P is not None else None
        adv_p = nets.P.judge(h_fake, sent.detach()).mean() if h_fake is not None else None
        aux_fake = nets.P.classify(h_fake) if use_aux else None
    sim = F.cosine_similarity(fake_emb, sent_raw, dim=-1).mean()
    err_g = -adv - opts.sim_weight * sim
    if adv_p is not None:
        err_g = err_g - opts.pixel_weight * adv_p
        pixel["G_adv_P"] = adv_p.item()
    if use_aux:
        g_aux = training_loss(aux_fake, *claims)
        err_g = err_g + opts.aux_weight * g_aux
        pixel["G_aux"] = g_aux.item()
    opt_g.zero_grad(set_to_none=True)
    _backward_step(err_g, opt_g, scaler)
    if scaler is not None:
        scaler.update()

    return {
        "errD": err_d.item(), "errD_real": err_real.item(), "errD_fake": err_fake.item(),
        "errD_mis": err_mis.item(), "MA_GP": gp.item(), "errG": err_g.item(), "G_adv": adv.item(),
        "clip_sim": sim.item(), **pixel,
    }


def _backward_step(loss: torch.Tensor, opt, scaler) -> None:
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)


# ---- data -------------------------------------------------------------------------------------


def open_named_dataset(dataset, size: int = 64, options: dict[str, Any] | None = None):
    """A dataset object, or a name for ``studio.ml.datasets.open_dataset`` (imported lazily) opened
    at ``size`` pixels with the factory's ``options`` (e.g. ``two_object_share`` for ``shapes``)."""
    if isinstance(dataset, str):
        from studio.ml.datasets import open_dataset

        try:
            return open_dataset(dataset, size=size, **(options or {}))
        except TypeError as exc:
            if "unexpected keyword argument" not in str(exc):
                raise
            raise ValueError(f"dataset {dataset!r}: {exc}") from None  # an option its factory does not take
    if options:
        raise ValueError("dataset options are for a dataset given by name")
    return dataset


def batches(dataset, batch_size: int, seed: int, flip: bool = False
            ) -> Iterator[tuple[torch.Tensor, list[str], list[dict | None]]]:
    """Endless ``(images [B,3,H,W] in [-1,1], captions, claims)`` from a map-style or iterable
    dataset; ``claims`` are the items' ``attrs["claim"]`` (None where a dataset has none).

    Map-style datasets are sampled uniformly with a seeded generator; iterables are read in
    order and restarted when they end.
    """
    rng = torch.Generator().manual_seed(seed)
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        n = len(dataset)
        if n == 0:
            raise ValueError("the dataset is empty")
        items = _random_items(dataset, n, rng)
    else:
        items = _cycle(dataset)
    while True:
        chunk = [next(items) for _ in range(batch_size)]
        images = torch.stack([torch.as_tensor(item["image"], dtype=torch.float32) for item in chunk])
        if flip:
            mask = torch.rand(len(chunk), generator=rng) < 0.5
            images[mask] = images[mask].flip(-1)
        yield images, [str(item["caption"]) for item in chunk], [(item.get("attrs") or {}).get("claim") for item in chunk]


def _random_items(dataset, n: int, rng: torch.Generator) -> Iterator[dict]:
    while True:
        yield dataset[int(torch.randint(n, (1,), generator=rng))]


def _cycle(iterable) -> Iterator[dict]:
    while True:
        empty = True
        for item in iterable:
            empty = False
            yield item
        if empty:
            raise ValueError("the dataset is empty")


# ---- checkpoints and samples ------------------------------------------------------------------


# ---- the averaged generator -------------------------------------------------------------------


def ema_update(ema: dict[str, torch.Tensor], G, decay: float) -> None:
    """Move the average towards G's weights after a step: GAN weights oscillate from step to step
    around what the generator has learnt; their average draws cleaner pictures than any one step."""
    with torch.no_grad():
        for key, value in G.learnable_state_dict().items():
            if value.is_floating_point():
                ema[key].lerp_(value.float(), 1.0 - decay)
            else:
                ema[key].copy_(value)


@contextmanager
def generator_weights(G, state: dict[str, torch.Tensor] | None):
    """``G`` with ``state`` (the averaged weights) for the block, its own trained weights after it."""
    if not state:
        yield G
        return
    own = {k: v.detach().clone() for k, v in G.learnable_state_dict().items()}
    G.load_state_dict(state, strict=False)
    try:
        yield G
    finally:
        G.load_state_dict(own, strict=False)


def start_ema(G, saved: dict[str, torch.Tensor] | None, path: Path) -> dict[str, torch.Tensor]:
    """The average a run continues: the checkpoint's, or G's weights where it has none yet."""
    ema = {k: v.detach().float().clone() for k, v in G.learnable_state_dict().items()}
    if saved is not None:
        if set(saved) != set(ema):
            raise WeightsError(f"{path}: its averaged generator does not fit the generator")
        ema = {k: v.detach().float().clone() for k, v in saved.items()}
    return ema


def save_checkpoint(path: Path, nets: Nets, opt_g, opt_d, step: int, meta: dict, scaler=None,
                    ema: dict[str, torch.Tensor] | None = None) -> None:
    """Official layout (``model``/``optimizers``) plus ``config``/``step``; readable with weights_only."""
    state = {
        "model": {"netG": nets.G.state_dict(), "netD": nets.D.state_dict(), "netC": nets.C.state_dict()},
        "optimizers": {"optimizer_G": opt_g.state_dict(), "optimizer_D": opt_d.state_dict()},
        "epoch": 0,
        "step": step,
        "config": nets.cfg.to_dict(),
        "meta": meta,
    }
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if nets.P is not None:
        state["netP"] = nets.P.state_dict()
    if ema is not None:
        state["netG_ema"] = ema
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def sample_grid(nets: Nets, prompts: Sequence[str], seeds: Sequence[int], path: Path) -> Path:
    """One row per prompt, one column per seed, written as a PNG (G in eval mode)."""
    from PIL import Image

    G = nets.G
    was_training = G.training
    G.eval()
    device = next(G.parameters()).device
    with torch.no_grad():
        sent = condition(sentence_embedding(nets.clip, tokenize_for(nets.clip, list(prompts))).float(),
                         nets.cfg.cond_scale)
        noise = noise_for(seeds, nets.cfg.nz).to(device)
        rows = []
        for s in sent:
            img = G(noise, s.expand(len(seeds), -1))
            rows.append(torch.nan_to_num(img.float()))
    G.train(was_training)
    pixels = to_uint8(torch.cat(rows))  # [P*S, H, W, 3]
    h, w = pixels.shape[1:3]
    grid = pixels.view(len(prompts), len(seeds), h, w, 3).permute(0, 2, 1, 3, 4)
    grid = grid.reshape(len(prompts) * h, len(seeds) * w, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(grid.cpu().numpy()).save(tmp, format="PNG")
    return path


# ---- the loop ---------------------------------------------------------------------------------


def train_galip(out_dir: str | Path, dataset, clip, *, config: GalipConfig | None = None,
                options: TrainOptions | None = None, resume: bool = True,
                on_metrics: Callable[[dict], None] | None = None, **option_overrides) -> dict[str, Any]:
    """Train (or continue training) GALIP on ``dataset`` with the frozen ``clip``.

    ``dataset``: items ``{"image": [3,H,W] in [-1,1], "caption": str, ...}`` or a dataset name
    for ``studio.ml.datasets.open_dataset``. ``clip``: a frozen open_clip model (see
    ``studio.ml.clip_load``). ``config`` defaults to :func:`default_config`; options may be given
    as a :class:`TrainOptions` or as keyword arguments (``steps=``, ``minutes=``, ...).
    Returns a summary dict (also written into ``model_card.json``).
    """
    opts = options or TrainOptions()
    for key, value in option_overrides.items():
        if not hasattr(opts, key):
            raise TypeError(f"unknown training option {key!r}")
        setattr(opts, key, value)
    if opts.steps is None and opts.minutes is None:
        raise ValueError("give steps or minutes")
    device = torch.device(opts.device)
    precision = opts.precision or ("fp16" if device.type == "cuda" else "fp32")
    check_training(str(device), precision, ("fp32", "fp16", "bf16"))  # before anything moves to the device
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    torch.manual_seed(opts.seed)

    resumed = read_official(ckpt_path) if resume and ckpt_path.exists() else None
    initial = read_weights(opts.init_g) if resumed is None and opts.init_g else None
    if resumed is not None and resumed.config is not None:
        config = resumed.config
    elif initial is not None:
        config = initial.config
    cfg = config or default_config(clip)
    clip = clip.to(device).eval().requires_grad_(False)
    if opts.aux_weight > 0 and opts.pixel_weight <= 0:
        raise ValueError("the auxiliary classifier lives in the pixel discriminator: give pixel_weight > 0 too")
    n_aux = len(CLAIM_CLASSES) if opts.aux_weight > 0 else 0
    nets = build_nets(cfg, clip, pixel_d=opts.pixel_weight > 0, n_aux=n_aux)
    step = 0
    if resumed is not None:
        load_into(nets, resumed, ckpt_path, need_d=True)
        step = int(resumed.extra.get("step", 0))
        if nets.P is not None:
            if "netP" not in resumed.extra:
                raise WeightsError(f"{ckpt_path}: the run was started without the pixel discriminator")
            try:
                nets.P.load_state_dict(resumed.extra["netP"])
            except RuntimeError:
                raise WeightsError(f"{ckpt_path}: the run was started "
                                   f"{'without' if n_aux else 'with'} the auxiliary classifier") from None
    elif initial is not None:
        load_into(nets, initial, opts.init_g)
    for net in (nets.G, nets.D, nets.C) + ((nets.P,) if nets.P is not None else ()):
        net.to(device).train()

    lr_g = opts.lr_g if opts.lr_g is not None else default_lr_g(cfg)
    opt_g = torch.optim.Adam([p for p in nets.G.parameters() if p.requires_grad], lr=lr_g, betas=BETAS)
    d_params = list(nets.D.parameters()) + list(nets.C.parameters())
    if nets.P is not None:
        d_params += list(nets.P.parameters())
    opt_d = torch.optim.Adam(d_params, lr=opts.lr_d, betas=BETAS)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if resumed is not None:
        optim = resumed.extra.get("optimizers", {})
        if "optimizer_G" in optim:
            restore_optimizer(opt_g, optim["optimizer_G"], lr_g)  # the moments, at this run's rates
            restore_optimizer(opt_d, optim["optimizer_D"], opts.lr_d)
        if scaler is not None and "scaler" in resumed.extra:
            scaler.load_state_dict(resumed.extra["scaler"])

    if not 0.0 <= opts.ema < 1.0:
        raise ValueError(f"ema is a decay in [0, 1), got {opts.ema}")
    ema = start_ema(nets.G, resumed.extra.get("netG_ema") if resumed is not None else None, ckpt_path) \
        if opts.ema > 0 else None
    data = batches(open_named_dataset(dataset, cfg.image_size, opts.dataset_options), opts.batch_size,
                   seed=opts.seed + step, flip=opts.flip)
    first = next(data)
    if tuple(first[0].shape[-2:]) != (cfg.image_size, cfg.image_size):
        raise ValueError(f"the dataset's pictures are {tuple(first[0].shape[-2:])} pixels but the generator draws "
                         f"{cfg.image_size}x{cfg.image_size}: the discriminators would compare different sizes")
    if n_aux:
        claim_batch(first[2], device)  # a dataset without shapes claims fails here, before any step
    first_captions = first[1]
    prompts = list(opts.sample_prompts) or list(dict.fromkeys(first_captions))[:8]
    seeds = list(range(8))
    meta = {**opts.meta, "lr_g": lr_g, "lr_d": opts.lr_d, "batch_size": opts.batch_size, "sim_weight": opts.sim_weight,
            "pixel_weight": opts.pixel_weight, **({"aux_weight": opts.aux_weight} if n_aux else {}),
            **({"dataset_options": dict(opts.dataset_options)} if opts.dataset_options else {}),
            **({"ema": opts.ema} if ema is not None else {})}
    if resumed is not None and "init_g" in resumed.meta:
        meta["init_g"] = resumed.meta["init_g"]
    elif initial is not None:
        meta["init_g"] = {"file": Path(opts.init_g).name, "sha256": sha256_file(opts.init_g),
                          "steps": initial.meta.get("steps")}
    noise_rng = torch.Generator().manual_seed(opts.seed * 1_000_003 + step)

    start = time.monotonic()
    last_save = start
    target = opts.steps
    deadline = start + opts.minutes * 60 if opts.minutes is not None else math.inf
    metrics_path = out / "metrics.jsonl"
    last: dict[str, float] = {}
    pending = first
    with _progress(opts.show_progress) as bar, open(metrics_path, "a") as log:
        task = bar.add_task("galip", total=target, completed=step)
        while (target is None or step < target) and time.monotonic() < deadline:
            images, captions, claims = pending if pending is not None else next(data)
            pending = None
            last = train_step(nets, opt_g, opt_d, images.to(device), captions, opts, scaler, noise_rng,
                              precision=precision, claims=claim_batch(claims, device) if n_aux else None)
            if ema is not None:
                ema_update(ema, nets.G, opts.ema)
            step += 1
            bad = [k for k, v in last.items() if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"step {step}: non-finite loss ({', '.join(bad)}); lower the learning rates")
            if step % opts.log_every == 0 or step == 1:
                record = {"step": step, "time_s": round(time.monotonic() - start, 2), **last}
                log.write(json.dumps(record) + "\n")
                log.flush()
                if on_metrics:
                    on_metrics(record)
            if step % opts.sample_every == 0:
                with generator_weights(nets.G, ema):
                    sample_grid(nets, prompts, seeds, out / "samples" / f"step_{step:06d}.png")
            if time.monotonic() - last_save > opts.save_every_s:
                save_checkpoint(ckpt_path, nets, opt_g, opt_d, step, meta, scaler, ema)
                last_save = time.monotonic()
            bar.update(task, completed=step, description=f"galip D {last['errD']:.3f} G {last['errG']:.3f}")

    elapsed = time.monotonic() - start
    save_checkpoint(ckpt_path, nets, opt_g, opt_d, step, meta, scaler, ema)
    with generator_weights(nets.G, ema):
        sample_grid(nets, prompts, seeds, out / "samples" / f"step_{step:06d}.png")
    card = {
        "model": "galip",
        "config": cfg.to_dict(),
        "steps": step,
        "seconds_this_run": round(elapsed, 1),
        "device": str(device),
        "hardware": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "precision": precision,
        "last_losses": last,
        "sample_prompts": prompts,
        **meta,
    }
    with generator_weights(nets.G, ema):  # a run with an average ships the average
        weights_sha = save_studio(out / "galip.safetensors", nets, meta=card)
    card["weights_sha256"] = weights_sha
    card["checkpoint_sha256"] = sha256_file(ckpt_path)
    with atomic_path(out / "model_card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2, default=str))
    return card


def _progress(show: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not show)
