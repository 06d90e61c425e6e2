"""``studio eval``: how often a generator draws what a `shapes` prompt asks for.

The headline figures are judged from the pixels alone (:mod:`studio.ml.checker`): colour,
shape, two-object relation, size and background (where the prompt names them), and the share of
blank canvases and of stray blobs. Prompts come from the whole `shapes` grammar (sizes,
backgrounds, both relation phrasings) on held-out scenes. Secondary, from a CLIP: its choice
among the four shapes (``clip_shape``, lenient: a CLIP trained on the same data accepts a soft
blob), the CLIP score, and optionally a Frechet distance between the CLIP image features of
generated images and of the held-out scenes' own drawings (``fd``, lower is better: it rises
with fringes, textures and stray blobs that no per-image check counts).
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
from studio.ml import BUNDLED_CLIP_ARCH, BUNDLED_CLIP_FILE, EMOJI_CLIP_FILE, shapes
from studio.ml.frechet import frechet_distance  # noqa: F401  (also part of this module's API)

#: The small CLIP shipped with Studio (``studio train clip`` + ``export_bundled_clip``).
BUNDLED_CLIP = BUNDLED_CLIP_FILE
#: ``ARCH`` of ``--clip ARCH:PATH`` for a file in the bundled format (another small CLIP).
BUNDLED_ARCH = BUNDLED_CLIP_ARCH


class EvalError(RuntimeError):
    """The evaluation cannot run (unknown CLIP file, model failed); one user-facing line."""


def load_eval_clip(spec: str, device: str, dataset: str = "shapes"):
    """``bundled`` (Studio's small CLIP for ``dataset``: the shapes one, or the emoji one),
    ``ARCH:PATH`` (any open_clip architecture + weights) or ``studio-bundled:PATH`` (a small CLIP
    exported with `studio train export-clip`)."""
    from studio.ml.clip_load import WeightsError, load_bundled_clip, load_clip

    try:
        if spec == "bundled" and dataset == "emoji":
            if not EMOJI_CLIP_FILE.is_file():
                raise EvalError("no CLIP trained on emoji is installed, and the shapes CLIP cannot judge emoji: pass "
                                "--clip studio-bundled:PATH (a CLIP exported with `studio train export-clip` from a "
                                "run on emoji)")
            return load_bundled_clip(EMOJI_CLIP_FILE, device=device)
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
    """CLIP's shape choice (one-object prompts, among the four shapes) and the CLIP score."""
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
        "clip_shape": {"value": float(np.mean(correct)) if correct else None, "n": len(correct)},
        "clip_score": {"value": float(score.mean()), "n": len(prompts)},
    }


@torch.no_grad()
def feature_distance(model, images: list, prompts: list[shapes.EvalPrompt]) -> dict[str, Any]:
    """Frechet distance (x100, on unit-norm CLIP image features) to the prompts' own scenes."""
    from studio.ml.zero_shot import embed_images

    reference = [shapes.render_attrs(p.attrs, canvas=images[0].size[0]) for p in prompts]
    gen = embed_images(model, to_tensor(images)).cpu().numpy()
    ref = embed_images(model, to_tensor(reference)).cpu().numpy()
    return {"value": 100.0 * frechet_distance(gen, ref), "n": len(images)}


def evaluate_model(
    settings: Settings,
    model_id: str,
    n: int = 512,
    seed: int = 0,
    clip: str = "bundled",
    params: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    fd_n: int = 0,
    dataset: str = "shapes",
) -> dict[str, Any]:
    """Generate ``n`` held-out prompts of ``dataset`` (``shapes`` or ``emoji``) with the registered
    ``model_id`` and score them."""
    from studio.loader import generators
    from studio.plugins import UnknownModel, get_registry

    registry = get_registry(settings.load_plugins)
    try:
        spec = registry.model(model_id)
    except UnknownModel as exc:
        raise EvalError(str(exc)) from None
    values = spec.validate_params(params or {})
    if dataset not in ("shapes", "emoji"):
        raise EvalError(f"studio eval knows the datasets shapes and emoji, not {dataset!r}")
    device = settings.resolve_device()
    if dataset == "emoji":
        from studio.ml.emoji import build
        from studio.ml.evaluate_emoji import evaluate_emoji_generator

        data = build()
        judge = load_eval_clip(clip, device, dataset)
        started = time.perf_counter()
        report = evaluate_emoji_generator(generators.get(spec, device), data, judge, n=n, seed=seed, params=values,
                                          batch=spec.max_batch, progress=progress, started=started)
        return {"model": model_id, "clip": clip, "device": device, **report}
    started = time.perf_counter()
    generator = generators.get(spec, device)
    report = evaluate_generator(generator, n=n, seed=seed, clip=clip, params=values, device=device,
                                batch=spec.max_batch, progress=progress, started=started, fd_n=fd_n)
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
    fd_n: int = 0,
) -> dict[str, Any]:
    """Score a loaded Generator (not necessarily registered, e.g. a training run's weights).

    ``clip`` is the CLIP behind the secondary figures (see :func:`load_eval_clip`). ``fd_n``
    images (0: none) go into the Frechet distance; the first ``n`` of them are the judged ones.
    """
    from studio.ml.checker import check_image, score_results

    started = time.perf_counter() if started is None else started
    total = max(n, fd_n)
    prompts = shapes.eval_prompts(total, seed=seed, phrasing="grammar")
    values = dict(params or {})
    images = []
    for start in range(0, total, max(1, batch)):
        chunk = [Request(p.text, seed + start + k, dict(values), index=start + k) for k, p in enumerate(prompts[start : start + batch])]
        images.extend(r.image for r in generator.generate(chunk, lambda _d, _t: None))
        if progress is not None:
            progress(len(images), total)
    generation_s = time.perf_counter() - started

    judged = [check_image(im, p.attrs) for im, p in zip(images[:n], prompts[:n])]
    metrics = score_results(judged)
    by_objects = {}
    for count in (1, 2):  # two-object scenes are where generators fail most: shown apart
        part = [r for r, p in zip(judged, prompts[:n]) if len(p.attrs["objects"]) == count]
        if part:  # only the figures this part asks (one object: no relation)
            by_objects[str(count)] = {k: v for k, v in score_results(part).items() if v["n"]}
    judge_clip = load_eval_clip(clip, device)
    metrics.update(clip_metrics(judge_clip, images[:n], prompts[:n]))
    if fd_n:
        metrics["fd"] = feature_distance(judge_clip, images[:fd_n], prompts[:fd_n])
    return {
        "generator": generator.describe(),
        "n": n,
        "seed": seed,
        "prompts": "shapes eval split, whole grammar",
        "clip": clip,
        "params": values,
        "device": device,
        "generation_s": round(generation_s, 2),
        "images_per_s": round(total / generation_s, 2) if generation_s else None,
        "metrics": metrics,
        "by_objects": by_objects,
    }


#: Lower is better for these figures; higher for every other one.
LOWER_IS_BETTER = ("blank", "strays", "fd")
