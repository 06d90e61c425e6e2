"""``studio eval``: how often a generator draws what a `shapes` prompt asks for.

Colour and relation are judged exactly from pixels (the palette is fixed and the background
plain: ``studio.ml.checker``); shape by a CLIP choosing among the four shapes in the asked
colour (one-object prompts); and the CLIP score is the cosine of image and prompt embeddings.
Images come straight from the model's Generator with the job seeds ``seed + i``, so a number in
a report can be reproduced image by image with ``studio submit``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from studio.config import Settings
from studio.generators import Request
from studio.ml import shapes

#: The small CLIP shipped with Studio (``studio train clip`` + ``export_bundled_clip``).
BUNDLED_CLIP = Path(__file__).parent / "weights" / "clip-small.safetensors"
#: ``ARCH`` of ``--clip ARCH:PATH`` for a file in the bundled format (another small CLIP).
BUNDLED_ARCH = "studio-bundled"


class EvalError(RuntimeError):
    """The evaluation cannot run (unknown CLIP file, model failed); one user-facing line."""


def load_eval_clip(spec: str, device: str):
    """``bundled`` (Studio's small CLIP), ``ARCH:PATH`` (any open_clip architecture + weights) or
    ``studio-bundled:PATH`` (a small CLIP exported with `studio train export-clip`)."""
    from studio.ml.clip_load import WeightsError, load_bundled_clip, load_clip

    try:
        if spec == "bundled":
            if not BUNDLED_CLIP.is_file():
                raise EvalError(f"the bundled CLIP is not installed ({BUNDLED_CLIP}); pass --clip ARCH:PATH")
            return load_bundled_clip(BUNDLED_CLIP, device=device)
        arch, sep, path = spec.partition(":")
        if not sep or not path:
            raise EvalError(f"--clip takes 'bundled' or ARCH:PATH, got {spec!r}")
        if arch == BUNDLED_ARCH:
            return load_bundled_clip(path, device=device)
        return load_clip(arch, path, device=device)
    except WeightsError as exc:
        raise EvalError(str(exc)) from None


def to_tensor(images: list) -> torch.Tensor:
    """PIL images -> float [B,3,H,W] in [-1, 1]."""
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


@torch.no_grad()
def clip_metrics(model, images: list, prompts: list[shapes.EvalPrompt]) -> dict[str, dict[str, Any]]:
    """Shape accuracy (one-object prompts, choosing among the four shapes) and the CLIP score."""
    from studio.ml.zero_shot import embed_images, embed_texts

    img = embed_images(model, to_tensor(images))
    texts = embed_texts(model, [p.text for p in prompts])
    score = (img * texts).sum(dim=-1)
    correct = []
    for i, prompt in enumerate(prompts):
        objects = prompt.attrs["objects"]
        if len(objects) != 1:
            continue
        colour, asked = objects[0]["colour"], objects[0]["shape"]
        choices = [asked] + [s for s in shapes.SHAPES if s != asked]
        options = embed_texts(model, [shapes.noun_phrase(colour, s) for s in choices])
        correct.append(int((options @ img[i]).argmax()) == 0)
    return {
        "shape": {"value": float(np.mean(correct)) if correct else float("nan"), "n": len(correct)},
        "clip_score": {"value": float(score.mean()), "n": len(prompts)},
    }


def evaluate_model(
    settings: Settings,
    model_id: str,
    n: int = 512,
    seed: int = 0,
    clip: str = "bundled",
    params: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate ``n`` held-out `shapes` prompts with the registered ``model_id`` and score them."""
    from studio.loader import generators
    from studio.plugins import UnknownModel, get_registry

    registry = get_registry(settings.load_plugins)
    try:
        spec = registry.model(model_id)
    except UnknownModel as exc:
        raise EvalError(str(exc)) from None
    values = spec.validate_params(params or {})
    device = settings.resolve_device()
    started = time.perf_counter()
    generator = generators.get(spec, device)
    report = evaluate_generator(generator, n=n, seed=seed, clip=clip, params=values, device=device,
                                batch=spec.max_batch, progress=progress, started=started)
    return {"model": model_id, **report}


def evaluate_generator(
    generator,
    n: int = 512,
    seed: int = 0,
    clip: str = "bundled",
    params: dict[str, Any] | None = None,
    device: str = "cpu",
    batch: int = 16,
    progress: Callable[[int, int], None] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Score a loaded Generator (not necessarily registered, e.g. a training run's weights).

    ``clip`` is the CLIP that judges shape and the CLIP score (see :func:`load_eval_clip`).
    """
    started = time.perf_counter() if started is None else started
    prompts = shapes.eval_prompts(n, seed=seed)
    values = dict(params or {})
    images = []
    for start in range(0, n, max(1, batch)):
        chunk = [Request(p.text, seed + start + k, dict(values), index=start + k) for k, p in enumerate(prompts[start : start + batch])]
        images.extend(r.image for r in generator.generate(chunk, lambda _d, _t: None))
        if progress is not None:
            progress(len(images), n)
    generation_s = time.perf_counter() - started

    from studio.ml.checker import score_images

    metrics = score_images(images, [p.attrs for p in prompts])
    metrics.update(clip_metrics(load_eval_clip(clip, device), images, prompts))
    return {
        "generator": generator.describe(),
        "n": n,
        "seed": seed,
        "clip": clip,
        "params": values,
        "device": device,
        "generation_s": round(generation_s, 2),
        "images_per_s": round(n / generation_s, 2) if generation_s else None,
        "metrics": {k: metrics[k] for k in ("colour", "shape", "relation", "clip_score", "shape_geometric") if k in metrics},
    }
