"""The model card of a CLIP-GEN model folder: what it was trained on and how well it works.

Written by ``studio clip-gen package --eval-n N`` next to ``model.json`` as ``model_card.json``.
Every number is measured on the packaged files themselves, on held-out `shapes` scenes:

- ``vqgan``: PSNR of encode -> decode and codebook usage/perplexity (stage 1 on its own);
- ``eval``: ``studio eval`` metrics without re-ranking (``candidates=1``) and with it, so the
  gain from re-ranking is stated, not assumed. Colour and relation are judged from pixels;
  shape and CLIP score by the bundled CLIP, which is also the re-ranking CLIP, so the CLIP score
  with re-ranking is optimistic by construction;
- ``defaults``: the parameters a plain ``studio eval --model clip-gen`` uses, i.e. which
  ``eval`` row a user reproduces;
- ``training``: steps, wall time and settings carried in each stage's weights metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.api import hardware

CARD_JSON = "model_card.json"


def training_summary(path: Path) -> dict[str, Any]:
    """Steps, wall time and settings a Studio training run stored in its safetensors metadata."""
    if path.suffix != ".safetensors":
        return {}
    from .checkpoints import read_safetensors

    _, meta = read_safetensors(path)
    metrics = meta.get("metrics") or {}
    seconds = meta.get("train_seconds", metrics.get("elapsed_s"))  # all resumed legs; older files: the last leg
    out = {"steps": meta.get("steps"), "minutes": round(seconds / 60, 1) if seconds is not None else None}
    for key in ("cond_noise", "cond_drop", "clip_loss_weight", "gpt", "vqgan"):
        if key in meta:
            out[key] = meta[key]
    out["final_metrics"] = {k: v for k, v in metrics.items() if k not in ("step", "elapsed_s")}
    return out


def vqgan_report(vqgan, n: int = 256, seed: int = 1) -> dict[str, Any]:
    """Reconstruction PSNR and codebook usage over ``n`` held-out `shapes` scenes."""
    import torch

    from studio.ml import shapes
    from studio.ml.evaluate import to_tensor

    from .imaging import psnr

    prompts = shapes.eval_prompts(n, seed=seed)
    images = to_tensor([shapes.render_attrs(p.attrs) for p in prompts])
    size = vqgan.config.resolution
    if images.shape[-1] != size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                                 align_corners=False)
    with torch.no_grad():
        indices = vqgan.encode_to_indices(images)
        rebuilt = vqgan.decode_indices(indices)
    counts = torch.bincount(indices.flatten(), minlength=vqgan.config.n_embed).float()
    p = counts / counts.sum()
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return {"n": n, "psnr_db": round(psnr(images, rebuilt), 2), "codes": vqgan.config.n_embed,
            "codes_used": int((counts > 0).sum()), "perplexity": round(perplexity, 1)}


def write_card(root: Path, *, eval_n: int, candidates: int, sources: dict[str, Path], extra: dict | None = None,
               guidance: float = 1.0, progress=None) -> dict[str, Any]:
    """Measure the model in ``root`` and write its ``model_card.json``; returns the card.

    ``guidance`` becomes the model's default guidance (a transformer with a null condition only)
    and every evaluation row uses it.
    """
    from studio.ml.evaluate import evaluate_generator

    from .generator import ClipGenGenerator
    from .plugin import DEFAULTS

    generator = ClipGenGenerator("clip-gen", root)
    generator.load("cpu")
    defaults = {k: v for k, v in DEFAULTS.items() if k not in ("image", "guidance")}
    if generator.gpt.config.null_condition:
        defaults["guidance"] = guidance
    elif guidance != 1.0:
        raise ValueError("guidance needs a transformer trained with --cond-drop (this one has no null condition)")
    card: dict[str, Any] = {
        "model": "clip-gen",
        "data": "shapes images only (captions never used for training); held-out eval split for every number here",
        "hardware": hardware(),
        "training": {part: training_summary(path) for part, path in sources.items() if part in ("vqgan", "transformer")},
        "vqgan": vqgan_report(generator.vqgan),
        "defaults": defaults,
        "eval": {},
        **(extra or {}),
    }
    guided = {"guidance": guidance} if "guidance" in defaults else {}
    settings = {"candidates=1": {"candidates": 1, **guided}}
    if candidates > 1:
        settings[f"candidates={candidates}"] = {"candidates": candidates, "keep": 1, **guided}
    for label, params in settings.items():
        report = evaluate_generator(generator, n=eval_n, seed=0, params=params,
                                    progress=(lambda d, t, label=label: progress(label, d, t)) if progress else None)
        card["eval"][label] = {"n": eval_n, "images_per_s": report["images_per_s"],
                               **{k: round(v["value"], 4) for k, v in report["metrics"].items()}}
    (root / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    return card
