"""Training both CLIP-GEN stages on images alone.

``train_vqgan`` follows taming's recipe: L1 + perceptual + codebook loss, and a hinge PatchGAN
switched on after ``disc_start`` steps whose weight is balanced against the reconstruction loss
by their gradient norms at ``decoder.conv_out.weight``. Codebook collapse (few codes in use) is
the classic failure at small scale, so usage and perplexity are logged and two remedies are on by
default: k-means initialisation of the codebook from encoder outputs, and restarting codes unused
for ``restart_every`` steps at random encoder outputs.

``train_transformer`` is CLIP-GEN's language-free stage: each image's tokens (frozen VQGAN) are
predicted from its CLIP *image* embedding. Gaussian noise on the normalised embedding (LAFITE)
narrows the gap to the *text* embeddings used at inference. The paper's image-level loss (decode
the predicted distribution straight-through and match CLIP embeddings) is optional.

Both are plain functions taking a dataset object (map-style or iterable, items are dicts with an
``image`` in ``[-1, 1]`` and optionally a ``caption``). A run directory holds ``checkpoint.pt``
(resumable, read back with ``weights_only=True``), ``metrics.jsonl``, ``samples/`` and, at the end,
the exported safetensors file. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from studio.api import MetricsLog, load_checkpoint, restore_optimizer, save_checkpoint
from studio.ml.precision import autocast, check_training

from .checkpoints import write_safetensors
from .gpt import GPT, GPTConfig, sample
from .imaging import grid, psnr, save_png
from .losses import NLayerDiscriminator, adaptive_weight, hinge_d_loss
from .vqgan import VQConfig, VQModel

# ---- data ---------------------------------------------------------------------------------------


def batches(dataset: Any, batch_size: int, resolution: int, seed: int = 0, device: str = "cpu") -> Iterator[tuple[torch.Tensor, list]]:
    """Endless ``(images [B,3,R,R], captions)`` batches: shuffled epochs for map-style datasets."""
    map_style = hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
    epoch = 0
    while True:
        if map_style:
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            items = (dataset[i] for i in order)
        else:
            items = iter(dataset)
        chunk, produced = [], False
        for item in items:
            chunk.append(item)
            if len(chunk) == batch_size:
                produced = True
                yield _collate(chunk, resolution, device)
                chunk = []
        if not produced:
            raise ValueError(f"the dataset holds fewer than one batch ({batch_size}) of images")
        epoch += 1


def _collate(items: list[dict], resolution: int, device: str) -> tuple[torch.Tensor, list]:
    images = []
    for item in items:
        image = item["image"].float()
        if image.shape[-1] != resolution or image.shape[-2] != resolution:
            image = F.interpolate(image[None], size=(resolution, resolution), mode="bilinear", antialias=True,
                                  align_corners=False)[0]
        images.append(image)
    return torch.stack(images).to(device), [item.get("caption") for item in items]


# ---- run files ----------------------------------------------------------------------------------


class _Window:
    """Running means of scalar metrics between two log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def pop(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return out


def _out_of_time(started: float, minutes: float | None) -> bool:
    return minutes is not None and time.monotonic() - started > minutes * 60


# ---- stage 1: VQGAN -----------------------------------------------------------------------------


@dataclass
class VQTrainConfig:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-4
    perceptual_weight: float = 1.0
    # An MSE term next to taming's L1. Small objects on a plain background are few pixels: L1's
    # optimum under uncertainty is the median, i.e. the background, and training can sit there
    # (objects reconstructed as grey blobs); squared error weighs the large object errors up.
    l2_weight: float = 0.0
    codebook_weight: float = 1.0
    disc_start: int = 1000  # steps of reconstruction-only training before the GAN loss
    disc_weight: float = 0.8
    disc_factor: float = 1.0
    disc_layers: int = 3
    disc_ndf: int = 64
    kmeans_init: bool = True
    kmeans_batches: int = 8
    restart_every: int = 200  # dead-code restart interval in steps (0: off)
    log_every: int = 25
    sample_every: int = 250
    checkpoint_every: int = 250
    minutes: float | None = None  # wall-time budget for this call
    seed: int = 0
    precision: str = "fp32"  # "bf16": mixed precision (studio.ml.precision)


def kmeans(points: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means; centres start at random points (with replacement when there are fewer points)."""
    n = points.shape[0]
    pick = torch.randint(n, (k,), generator=generator) if n < k else torch.randperm(n, generator=generator)[:k]
    centres = points[pick].clone()
    if n < k:
        centres += 0.01 * points.std() * torch.randn(centres.shape, generator=generator)
    for _ in range(iters):
        assign = torch.cdist(points, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


@torch.no_grad()
def _encoder_outputs(model: VQModel, images: torch.Tensor) -> torch.Tensor:
    z = model.quant_conv(model.encoder(images))
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


@torch.no_grad()
def restart_dead_codes(model: VQModel, usage: torch.Tensor, images: torch.Tensor, generator: torch.Generator) -> int:
    """Move every code with zero usage onto a random current encoder output; returns how many moved."""
    dead = (usage == 0).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    z = _encoder_outputs(model, images).cpu()
    pick = torch.randint(z.shape[0], (dead.numel(),), generator=generator)
    noise = 0.01 * z.std() * torch.randn((dead.numel(), z.shape[1]), generator=generator)
    weight = model.quantize.embedding.weight
    weight[dead.to(weight.device)] = (z[pick] + noise).to(weight.device, weight.dtype)
    return int(dead.numel())


def _perplexity(counts: torch.Tensor) -> float:
    p = counts.float() / counts.sum().clamp(min=1)
    return float(torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum()))


def train_vqgan(
    dataset: Any,
    out_dir: str | Path,
    vq: VQConfig,
    cfg: VQTrainConfig | None = None,
    *,
    perceptual: nn.Module | None = None,
    resume: bool = False,
    device: str = "cpu",
    echo: Callable[[dict], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict:
    """Train (or resume) a VQGAN; writes ``vqgan.safetensors`` (with its config) and returns a summary.

    ``echo`` sees every metrics record, ``on_step(step, total)`` every step (a progress display).

    ``perceptual(x, y) -> [B]`` is a frozen distance (:class:`~studio_clip_gen.losses.LPIPS` or
    :class:`~studio_clip_gen.losses.ClipPerceptual`); ``None`` trains with L1 alone.
    """
    cfg = cfg or VQTrainConfig()
    check_training(str(device), cfg.precision)
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = VQModel(vq).to(device)
    disc = NLayerDiscriminator(vq.out_ch, cfg.disc_ndf, cfg.disc_layers).to(device)
    opt_ae = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    if perceptual is not None:
        perceptual = perceptual.to(device).eval()
    step, usage = 0, torch.zeros(vq.n_embed, dtype=torch.long)
    state = load_checkpoint(out / "checkpoint.pt", missing_ok=True) if resume else None
    if state is not None:
        if VQConfig.from_dict(state["vq"]) != vq:
            raise ValueError(f"{out}: the checkpoint was trained with another VQGAN config")
        model.load_state_dict(state["model"])
        disc.load_state_dict(state["disc"])
        restore_optimizer(opt_ae, state["opt_ae"], cfg.lr)  # the moments, at this run's rate
        restore_optimizer(opt_d, state["opt_d"], cfg.lr)
        step, usage = state["step"], state["usage"]
    prior_s = state.get("train_seconds", 0.0) if state is not None else 0.0
    generator = torch.Generator().manual_seed(cfg.seed + step)
    data = batches(dataset, cfg.batch_size, vq.resolution, seed=cfg.seed + step, device=device)
    metrics = MetricsLog(out / "metrics.jsonl", echo)

    if step == 0 and cfg.kmeans_init:
        points = torch.cat([_encoder_outputs(model, next(data)[0]).cpu() for _ in range(cfg.kmeans_batches)])
        with torch.no_grad():
            model.quantize.embedding.weight.copy_(kmeans(points, vq.n_embed, generator=generator))

    def save() -> None:
        save_checkpoint({"step": step, "model": model.state_dict(), "disc": disc.state_dict(),
                          "opt_ae": opt_ae.state_dict(), "opt_d": opt_d.state_dict(), "usage": usage,
                          "vq": vq.to_dict(), "train": dataclasses.asdict(cfg),
                          "train_seconds": prior_s + time.monotonic() - started}, out / "checkpoint.pt")

    started, window = time.monotonic(), _Window()
    window_counts = torch.zeros(vq.n_embed, dtype=torch.long)
    restarted = 0
    model.train()
    while step < cfg.steps and not _out_of_time(started, cfg.minutes):
        x, _ = next(data)
        with autocast(device, cfg.precision):
            xrec, q = model(x)
        xrec = xrec.float()
        l1 = (x - xrec).abs().mean()
        rec = l1 + cfg.l2_weight * (x - xrec).pow(2).mean() if cfg.l2_weight else l1
        with autocast(device, cfg.precision):
            p_loss = perceptual(x, xrec).mean().float() if perceptual is not None else torch.zeros((), device=x.device)
        nll = rec + cfg.perceptual_weight * p_loss
        loss = nll + cfg.codebook_weight * q.loss
        gan_on = step >= cfg.disc_start and cfg.disc_factor > 0
        d_weight = torch.zeros(())
        if gan_on:
            with autocast(device, cfg.precision):
                g_loss = -disc(xrec).float().mean()
            d_weight = adaptive_weight(nll, g_loss, model.decoder.conv_out.weight) * cfg.disc_weight
            loss = loss + d_weight * cfg.disc_factor * g_loss
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        opt_ae.step()
        d_loss = torch.zeros(())
        if gan_on:
            with autocast(device, cfg.precision):
                real, fake = disc(x).float(), disc(xrec.detach()).float()
            d_loss = cfg.disc_factor * hinge_d_loss(real, fake)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()

        counts = torch.bincount(q.indices.flatten().cpu(), minlength=vq.n_embed)
        usage += counts
        window_counts += counts
        step += 1
        if on_step is not None:
            on_step(step, cfg.steps)
        if cfg.restart_every and step % cfg.restart_every == 0:
            restarted += restart_dead_codes(model, usage, x, generator)
            usage.zero_()
        window.add(loss=loss.item(), l1=l1.item(), perceptual=p_loss.item(), codebook=q.loss.item(),
                   d_loss=d_loss.item(), d_weight=float(d_weight))
        if step % cfg.log_every == 0 or step == cfg.steps:
            metrics.write({"step": step, **window.pop(), "psnr": psnr(x, xrec.detach()),
                           "codes_used": int((window_counts > 0).sum()), "usage": float((window_counts > 0).float().mean()),
                           "perplexity": _perplexity(window_counts), "restarted": restarted,
                           "elapsed_s": time.monotonic() - started})
            window_counts.zero_()
        if step % cfg.sample_every == 0:
            save_png(grid([x[:8], xrec[:8].detach()]), out / "samples" / f"vqgan_{step:07d}.png")
        if step % cfg.checkpoint_every == 0:
            save()
    save()
    model.eval()
    path = write_safetensors(out / "vqgan.safetensors", model.state_dict(),
                             {"vqgan": vq.to_dict(), "steps": step, "metrics": metrics.last,
                              "train_seconds": round(prior_s + time.monotonic() - started, 1),
                              "init": None})  # always trained from scratch
    return {"steps": step, "weights": str(path), "metrics": metrics.last, "elapsed_s": time.monotonic() - started}


# ---- stage 2: the transformer ------------------------------------------------------------------


@dataclass
class GPTTrainConfig:
    steps: int = 5000
    batch_size: int = 32
    lr: float = 5e-4
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr * min_lr_ratio
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    cond_noise: float = 0.1  # LAFITE: norm of the Gaussian perturbation relative to the unit embedding
    cond_drop: float = 0.0  # share of rows trained on the null condition (for classifier-free guidance)
    clip_loss_weight: float = 0.0  # the paper's image-level CLIP loss (0: off, as the reimplementation)
    precision: str = "fp32"  # "bf16": mixed precision (studio.ml.precision)
    log_every: int = 25
    sample_every: int = 250
    checkpoint_every: int = 250
    minutes: float | None = None
    seed: int = 0


def perturb(embedding: torch.Tensor, noise: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """LAFITE's remedy for the modality gap: ``normalise(e + noise * unit Gaussian direction)``."""
    e = F.normalize(embedding, dim=-1)
    if noise <= 0:
        return e
    direction = F.normalize(torch.randn(e.shape, generator=generator).to(e.device, e.dtype), dim=-1)
    return F.normalize(e + noise * direction, dim=-1)


def clip_embedding_loss(logits: torch.Tensor, vqgan: VQModel, clip_model: nn.Module, target: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between the CLIP embedding of the decoded prediction and ``target`` (unit-norm).

    The predicted distribution passes the codebook straight-through (hard one-hot forward,
    softmax gradient backward), then the frozen decoder and CLIP, so only the logits learn.
    """
    from .clip_embed import encode_images

    probs = logits.float().softmax(dim=-1)
    hard = F.one_hot(probs.argmax(dim=-1), probs.shape[-1]).to(probs.dtype)
    onehot = probs + (hard - probs).detach()
    codes = onehot @ vqgan.quantize.embedding.weight  # [B, T, C]
    g = vqgan.config.grid
    z = codes.transpose(1, 2).reshape(codes.shape[0], codes.shape[2], g, g)
    images = vqgan.decode(z).clamp(-1, 1)
    return (1 - (encode_images(clip_model, images) * target).sum(dim=-1)).mean()


def _lr_at(step: int, cfg: GPTTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _param_groups(model: GPT, weight_decay: float) -> list[dict]:
    """Decay matrices only; biases, norms, embeddings and positions are not decayed (minGPT's rule)."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and name not in ("pos_emb", "tok_emb.weight") else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


#: Datasets up to this many items get their encodings cached (``FrozenEncodings``), and a cache
#: holds at most this many pictures (then encodes the rest afresh); the procedural `shapes` stream
#: (a million scenes, each seen about once) is not worth the memory.
CACHE_ITEMS = 200_000


class FrozenEncodings:
    """The frozen VQGAN's tokens and CLIP's image embedding of each picture, computed once.

    A finite dataset without random augmentation (emoji, a user's folder) shows the same pictures
    every epoch, so their encodings are kept (about 1 KB a picture at a 16x16 grid). Pictures are
    keyed by their bytes, so several captions of one picture share an entry, and a dataset that
    does alter its pictures only stops gaining once ``CACHE_ITEMS`` are held. ``cache=False``:
    encode every batch.
    """

    def __init__(self, vqgan: VQModel, clip_model: nn.Module, device: str, precision: str, cache: bool) -> None:
        self.vqgan, self.clip_model, self.device, self.precision = vqgan, clip_model, device, precision
        self.entries: dict[bytes, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None
        self.token_dtype = torch.int16 if vqgan.config.n_embed <= 2**15 else torch.int64

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from .clip_embed import encode_images

        with autocast(self.device, self.precision):
            # the nearest-code search is float32, but under bf16 its input is the encoder's bf16
            # output, so near-ties can pick another code than a float32 encoder (about 2% of tokens)
            return self.vqgan.encode_to_indices(images), encode_images(self.clip_model, images).float()

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, grid*grid], image embeddings [B, D])`` of a batch."""
        if self.entries is None or len(images) == 0:
            return self._encode(images)
        import hashlib

        host = images.detach().cpu()
        keys = [hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest() for image in host]
        fresh = list({key: i for i, key in enumerate(keys) if key not in self.entries}.values())
        encoded: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        if fresh:
            tokens, embeddings = self._encode(images[fresh])
            for j, i in enumerate(fresh):
                encoded[keys[i]] = (tokens[j].cpu().to(self.token_dtype), embeddings[j].cpu())
            room = max(0, CACHE_ITEMS - len(self.entries))
            self.entries.update(list(encoded.items())[:room])
        pairs = [encoded.get(key) or self.entries[key] for key in keys]
        return (torch.stack([t for t, _ in pairs]).to(images.device, torch.long),
                torch.stack([e for _, e in pairs]).to(images.device))


def finite_dataset(dataset: Any) -> bool:
    """True for a dataset small enough to cache (``CACHE_ITEMS``); an iterable without a length,
    or one whose length cannot be told, is not."""
    try:
        return 0 < len(dataset) <= CACHE_ITEMS
    except (TypeError, ValueError, NotImplementedError):
        return False


def check_compatible(gpt: GPTConfig, vq: VQConfig, clip_dim: int) -> None:
    if gpt.n_codes != vq.n_embed:
        raise ValueError(f"transformer vocabulary {gpt.n_codes} != VQGAN codebook {vq.n_embed}")
    if gpt.grid != vq.grid:
        raise ValueError(f"transformer grid {gpt.grid} != VQGAN token grid {vq.grid}")
    if gpt.clip_dim != clip_dim:
        raise ValueError(f"transformer condition width {gpt.clip_dim} != CLIP embedding width {clip_dim}")


def train_transformer(
    dataset: Any,
    out_dir: str | Path,
    vqgan: VQModel,
    clip_model: nn.Module,
    gpt: GPTConfig,
    cfg: GPTTrainConfig | None = None,
    *,
    clip_info: dict | None = None,
    init: dict[str, torch.Tensor] | None = None,
    init_info: dict | None = None,
    resume: bool = False,
    device: str = "cpu",
    echo: Callable[[dict], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict:
    """Train (or resume) the CLIP-conditioned transformer on images alone.

    ``vqgan`` and ``clip_model`` are frozen here. ``clip_info`` (how to find that CLIP again) is
    stored in the exported ``transformer.safetensors`` next to the config. ``init``: weights a new
    run starts from (a shipped model trained further; its optimiser starts afresh, so the warm-up
    applies); a null condition it lacks starts from its initialisation. ``init_info``: where
    those weights came from (:func:`init_record`), stored as ``init`` (and in the checkpoint, for
    a resumed run) so a model card can state the whole training, not only this run's; ``init``
    without it leaves the key out (unknown), a run from scratch stores None. Returns a summary.
    """
    from .clip_embed import embed_dim, encode_text

    cfg = cfg or GPTTrainConfig()
    check_training(str(device), cfg.precision)
    check_compatible(gpt, vqgan.config, embed_dim(clip_model))
    if cfg.cond_drop > 0 and not gpt.null_condition:
        raise ValueError("condition dropout needs a transformer with a null condition (GPTConfig.null_condition)")
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    vqgan = vqgan.to(device).eval().requires_grad_(False)
    clip_model = clip_model.to(device).eval().requires_grad_(False)
    model = GPT(gpt).to(device)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    step = 0
    state = load_checkpoint(out / "checkpoint.pt", missing_ok=True) if resume else None
    if state is not None:
        if GPTConfig.from_dict(state["gpt"]) != gpt:
            raise ValueError(f"{out}: the checkpoint was trained with another transformer config")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    elif init is not None:
        missing, unexpected = model.load_state_dict(init, strict=False)
        if unexpected or set(missing) - {"null_cond"}:
            raise ValueError(f"the initial weights do not fit the transformer config "
                             f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    prior_s = state.get("train_seconds", 0.0) if state is not None else 0.0
    # where the weights started: kept in the checkpoint, so a resumed run (without --init) still knows
    origin = {"init": init_info} if init is None or init_info is not None else {}  # {}: started unrecorded
    if state is not None:  # a checkpoint from before the record cannot tell
        origin = state.get("origin", {})
    generator = torch.Generator().manual_seed(cfg.seed + step)
    data = batches(dataset, cfg.batch_size, vqgan.config.resolution, seed=cfg.seed + step, device=device)
    encode = FrozenEncodings(vqgan, clip_model, str(device), cfg.precision, cache=finite_dataset(dataset))
    metrics = MetricsLog(out / "metrics.jsonl", echo)

    def save() -> None:
        save_checkpoint({"step": step, "model": model.state_dict(), "opt": opt.state_dict(), "gpt": gpt.to_dict(),
                          "train": dataclasses.asdict(cfg), "train_seconds": prior_s + time.monotonic() - started,
                          "origin": origin}, out / "checkpoint.pt")

    started, window = time.monotonic(), _Window()
    model.train()
    while step < cfg.steps and not _out_of_time(started, cfg.minutes):
        images, captions = next(data)
        tokens, image_emb = encode(images)
        cond = perturb(image_emb, cfg.cond_noise, generator)
        drop = None
        if cfg.cond_drop > 0:
            drop = (torch.rand(cond.shape[0], generator=generator) < cfg.cond_drop).to(cond.device)
        with autocast(device, cfg.precision):
            logits = model(cond, tokens[:, :-1], drop)
        logits = logits.float()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
        loss = ce
        clip_loss = torch.zeros(())
        if cfg.clip_loss_weight > 0:
            # only rows that saw their image's embedding: a null-condition row has no target to match
            kept = torch.ones_like(image_emb[:, 0], dtype=torch.bool) if drop is None else ~drop
            if kept.any():
                clip_loss = clip_embedding_loss(logits[kept], vqgan, clip_model, image_emb[kept])
                loss = loss + cfg.clip_loss_weight * clip_loss
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        if on_step is not None:
            on_step(step, cfg.steps)
        accuracy = (logits.argmax(-1) == tokens).float().mean()
        window.add(loss=loss.item(), ce=ce.item(), clip_loss=clip_loss.item(), accuracy=accuracy.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {"step": step, **window.pop(), "lr": _lr_at(step - 1, cfg), "elapsed_s": time.monotonic() - started}
            if all(isinstance(c, str) for c in captions):
                # the modality gap: matched image-text cosine vs the image-image cosine the model trains on
                record["cos_image_text"] = float((image_emb * encode_text(clip_model, captions)).sum(-1).mean())
                record["cos_image_noisy_image"] = float((image_emb * cond).sum(-1).mean())
            metrics.write(record)
        if step % cfg.sample_every == 0:
            _transformer_samples(model, vqgan, clip_model, images[:4], captions[:4], out, step)
            model.train()
        if step % cfg.checkpoint_every == 0:
            save()
    save()
    model.eval()
    path = write_safetensors(out / "transformer.safetensors", model.state_dict(),
                             {"gpt": gpt.to_dict(), "clip": clip_info or {}, "cond_noise": cfg.cond_noise, "cond_drop": cfg.cond_drop,
                              "clip_loss_weight": cfg.clip_loss_weight, "steps": step, "metrics": metrics.last,
                              "train_seconds": round(prior_s + time.monotonic() - started, 1),
                              **origin})  # init None: trained from scratch; no key: unknown
    return {"steps": step, "weights": str(path), "metrics": metrics.last, "elapsed_s": time.monotonic() - started}


def init_record(path: Path) -> dict[str, Any]:
    """What a run started with ``--init path`` records of its starting weights: their sha256, how
    long they were trained and, where their file can tell, how long in all with earlier legs.

    A file records ``init: null`` when it was trained from scratch; a file without the key comes
    from before the record existed, so whatever it started from is unknown and no total is given.
    """
    from studio.api import sha256_file

    from .checkpoints import read_safetensors_meta

    meta = read_safetensors_meta(path) if path.suffix == ".safetensors" else {}
    steps, seconds = meta.get("steps"), meta.get("train_seconds")
    record: dict[str, Any] = {"sha256": sha256_file(path), "steps": steps, "train_seconds": seconds}
    if "init" not in meta:
        return record
    earlier = meta["init"] or {"steps_in_all": 0, "train_seconds_in_all": 0.0}
    if steps is not None and earlier.get("steps_in_all") is not None:
        record["steps_in_all"] = earlier["steps_in_all"] + steps
    if seconds is not None and earlier.get("train_seconds_in_all") is not None:
        record["train_seconds_in_all"] = round(earlier["train_seconds_in_all"] + seconds, 1)
    return record


@torch.no_grad()
def _transformer_samples(model: GPT, vqgan: VQModel, clip_model: nn.Module, images: torch.Tensor, captions: list,
                         out: Path, step: int) -> None:
    """Originals, samples from their image embeddings and, with captions, from their text embeddings."""
    from .clip_embed import encode_images, encode_text

    model.eval()
    rows = [images]
    conds = [encode_images(clip_model, images)]
    if all(isinstance(c, str) for c in captions):
        conds.append(encode_text(clip_model, captions))
    for cond in conds:
        gens = [torch.Generator().manual_seed(i) for i in range(cond.shape[0])]
        rows.append(vqgan.decode_indices(sample(model, cond, gens)))
    save_png(grid(rows), out / "samples" / f"transformer_{step:07d}.png")
