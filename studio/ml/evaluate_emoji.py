"""``studio eval --dataset emoji``: does a picture show the concept its prompt asks for?

Prompts are the dataset's held-out phrasings (templates and alias names never used as training
captions, :meth:`studio.ml.emoji.EmojiData.heldout_prompts`), so a model is asked for concepts in
words it did not see verbatim. There is no pixel judge for a cat face, so each generated image is
*matched against every picture of the dataset* and the concepts are ranked by their best-matching
picture, twice:

* by CLIP image features (cosine; Studio's small CLIP trained on emoji, where installed, unless
  ``--clip`` names another, e.g. the CLIP the model was trained with; the shapes CLIP never saw
  an emoji and is never asked), and
* by a plain pixel distance (L2 on pictures averaged down to ``PIXEL_SIDE`` squared cells), which
  no CLIP can flatter.

``top1``/``top5``: the asked concept is the first / among the first five concepts of that
ranking. Also: ``diversity``, the mean absolute pixel difference (0-1) between two seeds of the
same prompt (0: the model ignores its seed), and ``fd``, the Frechet distance (x100) between the
CLIP features of the generated images and of the asked concepts' own pictures.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from studio.generators import Request

#: Side of the averaged-down pictures the pixel distance compares.
PIXEL_SIDE = 16
#: Seed offset of the second image of a prompt for ``diversity``.
SECOND_SEED = 1_000_003


@dataclass
class Reference:
    """Every picture of the dataset in the two spaces images are matched in."""

    concepts: list[str]  # per picture
    features: torch.Tensor  # [N, D] unit-norm CLIP image features
    pixels: torch.Tensor  # [N, 3 * PIXEL_SIDE**2] in [0, 1]


def to_unit_tensor(images: list, size: int) -> torch.Tensor:
    """PIL images -> float ``[B,3,size,size]`` in [0, 1] (resized when another size)."""
    arrays = [np.asarray(im.convert("RGB").resize((size, size)) if im.size != (size, size) else im.convert("RGB"),
                         dtype=np.float32) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0


def pixel_vectors(images01: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(images01, PIXEL_SIDE).flatten(1)


@torch.no_grad()
def clip_features(clip, images01: torch.Tensor) -> torch.Tensor:
    from studio.ml.zero_shot import embed_images

    return embed_images(clip, images01 * 2 - 1)


def dataset_pictures(data, rows=None) -> torch.Tensor:
    """Pictures of a built :class:`~studio.ml.emoji.EmojiData` (all, or ``rows``) as float
    ``[N,3,S,S]`` in [0, 1]."""
    images = data.images if rows is None else data.images[rows]
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def build_reference(data, clip) -> Reference:
    """``data``: a built :class:`~studio.ml.emoji.EmojiData`."""
    images = dataset_pictures(data)
    return Reference(list(data.concepts), clip_features(clip, images), pixel_vectors(images))


def eval_prompts(data, n: int, seed: int = 0) -> list[dict]:
    """``n`` held-out prompts, drawn without replacement in a seeded order (all of them if fewer)."""
    prompts = data.heldout_prompts()
    random.Random(seed).shuffle(prompts)
    return prompts[:n]


def ranked_concepts(scores: torch.Tensor, concepts: list[str], k: int = 5) -> list[list[str]]:
    """Per row of ``scores [G, N]`` (higher is closer): the first ``k`` distinct concepts by their
    best-scoring picture."""
    out = []
    order = scores.argsort(dim=1, descending=True)
    for row in order:
        seen: list[str] = []
        for index in row.tolist():
            concept = concepts[index]
            if concept not in seen:
                seen.append(concept)
                if len(seen) == k:
                    break
        out.append(seen)
    return out


def concept_accuracy(images01: torch.Tensor, asked: list[str], reference: Reference, clip) -> dict[str, dict]:
    """Top-1 and top-5 concept accuracy by CLIP features and by pixels."""
    by_clip = clip_features(clip, images01) @ reference.features.T
    by_pixels = -torch.cdist(pixel_vectors(images01), reference.pixels)
    metrics = {}
    for space, scores in (("clip", by_clip), ("pixel", by_pixels)):
        ranked = ranked_concepts(scores, reference.concepts)
        for k in (1, 5):
            hits = [concept in top[:k] for concept, top in zip(asked, ranked)]
            metrics[f"{space}_top{k}"] = {"value": float(np.mean(hits)), "n": len(hits)}
    return metrics


def diversity(first01: torch.Tensor, second01: torch.Tensor) -> dict[str, Any]:
    """Mean absolute pixel difference between two images of the same prompts (0-1)."""
    return {"value": float((first01 - second01).abs().mean()), "n": len(first01)}


def target_pictures(data, prompts: list[dict]) -> torch.Tensor:
    """The dataset's own picture of each prompt's concept (in the asked style, else the first)."""
    index: dict[tuple[str, str | None], int] = {}
    for i, (concept, style) in enumerate(zip(data.concepts, data.styles)):
        index.setdefault((concept, style), i)
        index.setdefault((concept, None), i)
    return dataset_pictures(data, [index[(p["concept"], p["style"])] for p in prompts])


def _generate(generator, prompts: list[dict], seed: int, params: dict, batch: int,
              progress: Callable[[int], None]) -> list:
    images: list = []
    for start in range(0, len(prompts), max(1, batch)):
        chunk = [Request(p["caption"], seed + start + k, dict(params), index=start + k)
                 for k, p in enumerate(prompts[start : start + batch])]
        images.extend(r.image for r in generator.generate(chunk, lambda _d, _t: None))
        progress(len(chunk))
    return images


def evaluate_emoji_generator(
    generator,
    data,
    clip,
    n: int = 256,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    batch: int = 16,
    diversity_n: int = 64,
    progress: Callable[[int, int], None] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Score a loaded Generator on ``n`` held-out emoji prompts (see the module docstring).

    ``data``: the built dataset; ``clip``: the loaded CLIP whose image features match pictures.
    """
    from studio.ml.frechet import frechet_distance

    started = time.perf_counter() if started is None else started
    prompts = eval_prompts(data, n, seed)
    values = dict(params or {})
    second = prompts[: min(diversity_n, len(prompts))]
    total, done = len(prompts) + len(second), 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    images = _generate(generator, prompts, seed, values, batch, advance)
    again = _generate(generator, second, seed + SECOND_SEED, values, batch, advance)
    generation_s = time.perf_counter() - started

    size = data.size
    generated = to_unit_tensor(images, size)
    reference = build_reference(data, clip)
    metrics = concept_accuracy(generated, [p["concept"] for p in prompts], reference, clip)
    metrics["diversity"] = diversity(generated[: len(second)], to_unit_tensor(again, size))
    targets = target_pictures(data, prompts)
    metrics["fd"] = {"value": 100.0 * frechet_distance(clip_features(clip, generated).cpu().numpy(),
                                                       clip_features(clip, targets).cpu().numpy()), "n": len(prompts)}
    return {
        "generator": generator.describe(),
        "dataset": "emoji",
        "n": len(prompts),
        "seed": seed,
        "prompts": "emoji held-out phrasings (templates and alias names never used in training)",
        "pictures": len(data),
        "params": values,
        "generation_s": round(generation_s, 2),
        "images_per_s": round(total / generation_s, 2) if generation_s else None,
        "metrics": metrics,
    }


@torch.no_grad()
def zero_shot_concepts(clip, data, n: int = 256, seed: int = 0, text_encoder: Callable | None = None) -> dict[str, Any]:
    """A CLIP's own concept accuracy on ``n`` held-out phrasings: each prompt's text embedding
    ranks the concepts by their best-matching picture (text-to-image retrieval). ``score`` (the
    mean of top-1 and top-5) is what a training run keeps its best checkpoint by."""
    from studio.ml.zero_shot import embed_texts

    prompts = eval_prompts(data, n, seed)
    pictures = clip_features(clip, dataset_pictures(data))
    texts = embed_texts(clip, [p["caption"] for p in prompts], text_encoder)
    ranked = ranked_concepts(texts @ pictures.T.to(texts.device), list(data.concepts))
    top1 = float(np.mean([p["concept"] == top[0] for p, top in zip(prompts, ranked)]))
    top5 = float(np.mean([p["concept"] in top for p, top in zip(prompts, ranked)]))
    return {"concept_top1": top1, "concept_top5": top5, "n": len(prompts), "concepts": len(set(data.concepts)),
            "score": (top1 + top5) / 2}
