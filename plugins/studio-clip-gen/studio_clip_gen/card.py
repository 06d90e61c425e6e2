"""The model card of a CLIP-GEN model folder: what it was trained on and how well it works.

Written by ``studio clip-gen package --eval-n N`` next to ``model.json`` as ``model_card.json``.
Every number is measured on the packaged files themselves, on held-out data of the dataset the
model was trained on (``--dataset``): `shapes` scenes, or `emoji` pictures and held-out phrasings
(concept accuracy by the model's own CLIP and by pixels, see ``studio.ml.evaluate_emoji``):

- ``vqgan``: PSNR of encode -> decode and codebook usage/perplexity (stage 1 on its own);
- ``eval``: ``studio eval`` metrics without re-ranking (``candidates=1``) and with it, so the
  gain from re-ranking is stated, not assumed. Shapes are judged from the pixels; the CLIP
  columns are secondary and come from the bundled CLIP, which is also the conditioning CLIP
  (and the re-ranking one unless the folder has its own), so they are lenient;
- ``rerank_clip``: the folder's own re-ranking CLIP, if it has one: its digest and its card's
  training record and held-out zero-shot figures;
- ``claims``: the folder's claims classifier, if it has one: its digest and the training record
  in its header (steps, held-out accuracy, the VQGAN its pictures went through);
- ``defaults``: the parameters a plain ``studio eval --model clip-gen`` uses, i.e. which
  ``eval`` row a user reproduces;
- ``training``: steps, wall time and settings carried in each stage's weights metadata;
- ``vocabulary``, ``draws``, ``licence``: what `studio submit` warns about and `studio models` shows.
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
    from .checkpoints import read_safetensors_meta

    meta = read_safetensors_meta(path)
    metrics = meta.get("metrics") or {}
    seconds = meta.get("train_seconds", metrics.get("elapsed_s"))  # all resumed legs; older files: the last leg
    out = {"steps": meta.get("steps"), "minutes": round(seconds / 60, 1) if seconds is not None else None}
    for key in ("cond_noise", "cond_drop", "clip_loss_weight", "gpt", "vqgan"):
        if key in meta:
            out[key] = meta[key]
    if meta.get("init"):  # trained further from other weights (--init): the whole training, where known
        init = meta["init"]
        out["started_from"] = {k: init[k] for k in ("sha256", "steps", "train_seconds") if k in init}
        if init.get("steps_in_all") is not None and out["steps"] is not None:
            out["steps_in_all"] = init["steps_in_all"] + out["steps"]
        if init.get("train_seconds_in_all") is not None and seconds is not None:
            out["minutes_in_all"] = round((init["train_seconds_in_all"] + seconds) / 60, 1)
    out["final_metrics"] = {k: v for k, v in metrics.items() if k not in ("step", "elapsed_s")}
    return out


def _rerank_record(root: Path) -> dict[str, Any]:
    """The re-ranking CLIP of a folder that has one: its file's digest and its own card's figures."""
    from studio.api import sha256_file_cached

    from .model_dir import clip_card, clip_path, read_manifest

    spec = read_manifest(root).get("rerank")
    if not spec:
        return {}
    return {"rerank_clip": {**spec, "sha256": sha256_file_cached(clip_path(root, spec)), **clip_card(root, spec)}}


def _claims_record(root: Path) -> dict[str, Any]:
    """The claims classifier of a folder that has one: its file's digest and its training record."""
    from studio.api import sha256_file_cached
    from studio.ml.claims import claims_training_record

    from .model_dir import read_manifest

    spec = read_manifest(root).get("claims")
    if not spec:
        return {}
    path = root / spec["file"]
    return {"claims": {**spec, "sha256": sha256_file_cached(path), "training": claims_training_record(path)}}


def shapes_images(n: int = 256, seed: int = 1):
    """``n`` held-out `shapes` scenes as float ``[n,3,64,64]`` in [-1,1]."""
    from studio.ml import shapes
    from studio.ml.evaluate import to_tensor

    return to_tensor([shapes.render_attrs(p.attrs) for p in shapes.eval_prompts(n, seed=seed)])


def emoji_images(data, n: int = 256, seed: int = 1):
    """``n`` pictures of the built emoji dataset (a seeded draw) as float ``[n,3,S,S]`` in [-1,1]."""
    import numpy as np

    from studio.ml.evaluate_emoji import dataset_pictures

    rows = np.sort(np.random.default_rng(seed).choice(len(data), size=min(n, len(data)), replace=False))
    return dataset_pictures(data, rows) * 2 - 1


def vqgan_report(vqgan, images=None) -> dict[str, Any]:
    """Reconstruction PSNR and codebook usage over ``images`` (default: 256 held-out `shapes` scenes)."""
    import torch

    from .imaging import psnr

    images = shapes_images() if images is None else images
    n = images.shape[0]
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


def shapes_domain() -> dict[str, Any]:
    """What a card says of a model trained on `shapes`, and how it is evaluated."""
    from studio.ml import shapes
    from studio.ml.evaluate import evaluate_generator

    def evaluate(generator, n, params, progress):
        return evaluate_generator(generator, n=n, seed=0, params=params, progress=progress)

    return {"data": "shapes images only (captions never used for training); held-out eval split for every number here",
            "vocabulary": shapes.vocabulary(), "draws": "coloured shapes",
            "licence": "Apache-2.0 (trained by this project; no third-party data)",
            "images": shapes_images, "evaluate": evaluate}


def emoji_domain(size: int, data=None) -> dict[str, Any]:
    """What a card says of a model trained on `emoji` (``data``, default: every style installed
    here), and how it is evaluated: concept accuracy on held-out phrasings, pictures matched by
    the model's own CLIP."""
    from studio.api import prompt_words
    from studio.ml import emoji
    from studio.ml.evaluate_emoji import evaluate_emoji_generator

    data = emoji.build(size=size) if data is None else data
    styles = list(data.sources)

    def evaluate(generator, n, params, progress):
        return evaluate_emoji_generator(generator, data, generator.clip, n=n, seed=0, params=params, progress=progress)

    words = sorted({w for caption in data.captions("train") for w in prompt_words(caption)})
    return {"data": (f"emoji pictures only (captions never used for training): {data.concept_count()} concepts in "
                     f"{', '.join(styles)}; held-out phrasings for every concept-accuracy number here"),
            "vocabulary": words, "draws": f"emoji ({data.concept_count(False)} everyday concepts)",
            "licence": ("Apache-2.0 weights, trained on artwork under these terms:\n" + emoji.attribution_text(styles)),
            "images": lambda: emoji_images(data), "evaluate": evaluate}


#: Model defaults a card may set beside guidance: how tokens are sampled.
SAMPLING_DEFAULTS = ("temperature", "top_k", "top_p")


def check_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    """``sampling`` with each value coerced by its parameter; ValueError naming a bad key or value."""
    from .plugin import PARAMS

    params = {p.name: p for p in PARAMS if p.name in SAMPLING_DEFAULTS}
    out = {}
    for key, value in sampling.items():
        if key not in params:
            raise ValueError(f"a model card's sampling default must be one of {', '.join(SAMPLING_DEFAULTS)}, not {key!r}")
        out[key] = params[key].coerce(value)
    return out


def _card_records(folder: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """Part -> (digest of its file, its card's training entry) of the model folder ``folder``."""
    from studio.api import sha256_file_cached

    from .plugin import read_card

    out = {}
    for part, entry in (read_card(folder).get("training") or {}).items():
        path = folder / f"{part}.safetensors"
        if isinstance(entry, dict) and entry.get("steps") is not None and path.is_file():
            out[part] = (sha256_file_cached(path), entry)
    return out


def known_records(sources: dict[str, Path], replaced: Path | None = None) -> dict[str, dict[str, Any]]:
    """Part -> the training entry a model card holds for the very file given as that part: the
    card of the folder the part is taken from, or of the folder being replaced (``replaced``).

    Why: weights trained before runs wrote their record into the file keep the record their card
    holds when they are packaged again unchanged. Read before the destination is replaced.
    """
    from studio.api import sha256_file_cached

    out = {}
    for part, source in sources.items():
        digest = sha256_file_cached(source)
        for folder in [source.parent] + ([replaced] if replaced is not None else []):
            found = _card_records(folder).get(part)
            if found and found[0] == digest:
                out[part] = found[1]
                break
    return out


def _training(sources: dict[str, Path], known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for part in ("vqgan", "transformer"):
        if part in sources:
            summary = training_summary(sources[part])
            out[part] = known[part] if summary.get("steps") is None and part in known else summary
    return out


def write_card(root: Path, *, eval_n: int, candidates: int, sources: dict[str, Path], extra: dict | None = None,
               guidance: float = 1.0, progress=None, dataset: str = "shapes", data=None,
               sampling: dict[str, Any] | None = None,
               known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Measure the model in ``root`` and write its ``model_card.json``; returns the card.

    ``guidance`` becomes the model's default guidance (a transformer with a null condition only)
    and every evaluation row uses it. ``dataset``: what the model was trained on (``shapes`` or
    ``emoji``), which decides the held-out data, the measures and the vocabulary; ``data``: a
    built emoji dataset to use instead of building every installed style. ``sampling``: further
    defaults of the model's token sampling (``temperature``, ``top_k``, ``top_p``), which every
    evaluation row uses as well. ``known``: :func:`known_records` of the sources, read before
    the folder was written.
    """
    from .generator import ClipGenGenerator
    from .plugin import DEFAULTS

    if dataset not in ("shapes", "emoji"):
        raise ValueError(f"a model card can be measured on shapes or emoji, not {dataset!r}")

    generator = ClipGenGenerator("clip-gen", root)
    generator.load("cpu")
    sampling = check_sampling(sampling or {})
    defaults = {k: v for k, v in DEFAULTS.items() if k not in ("image", "guidance")} | sampling
    if generator.gpt.config.null_condition:
        defaults["guidance"] = guidance
    elif guidance != 1.0:
        raise ValueError("guidance needs a transformer trained with --cond-drop (this one has no null condition)")
    domain = emoji_domain(generator.vqgan.config.resolution, data) if dataset == "emoji" else shapes_domain()
    card: dict[str, Any] = {
        "model": "clip-gen",
        "dataset": dataset,
        "data": domain["data"],
        "hardware": hardware(),
        "training": _training(sources, known or {}),
        "vqgan": vqgan_report(generator.vqgan, domain["images"]()),
        **_rerank_record(root),
        **_claims_record(root),
        "defaults": defaults,
        "eval": {},
        "vocabulary": domain["vocabulary"],
        "draws": domain["draws"],
        "licence": domain["licence"],
        **(extra or {}),
    }
    guided = {"guidance": guidance} if "guidance" in defaults else {}
    guided |= sampling
    settings = {"candidates=1": {"candidates": 1, **guided}}
    if candidates > 1:
        settings[f"candidates={candidates}"] = {"candidates": candidates, "keep": 1, **guided}
    for label, params in settings.items():
        report = domain["evaluate"](generator, eval_n, params,
                                    (lambda d, t, label=label: progress(label, d, t)) if progress else None)
        card["eval"][label] = {"n": eval_n, "images_per_s": report["images_per_s"],
                               **{k: None if v["value"] is None else round(v["value"], 4)
                                  for k, v in report["metrics"].items()}}
    (root / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    return card
