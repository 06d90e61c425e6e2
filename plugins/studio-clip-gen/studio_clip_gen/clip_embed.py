"""The few CLIP operations CLIP-GEN needs, in one place so the CLIP backend can change behind them.

Embeddings are always L2-normalised and images always reach CLIP with CLIP's own mean/std
(``studio.ml.clip_features.to_clip_input``, mapping ``clean``): the public reimplementation skipped
that normalisation in re-ranking and in its CLIP loss, which silently degrades both.
Nothing here modifies a tensor in place, so gradients can flow through (the CLIP loss needs that).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def context_length(model) -> int:
    for owner in (model, getattr(model, "text", None)):
        value = getattr(owner, "context_length", None)
        if isinstance(value, int):
            return value
    return 77


def embed_dim(model) -> int:
    """Width of the joint embedding space (what the transformer's condition projection reads)."""
    visual = model.visual
    proj = getattr(visual, "proj", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[1])
    output_dim = getattr(visual, "output_dim", None)
    if isinstance(output_dim, int):
        return output_dim
    with torch.no_grad():
        size = _image_size(model)
        return int(model.encode_image(torch.zeros(1, 3, size, size, device=_device(model))).shape[-1])


def _image_size(model) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def tokenize(model, prompts: Sequence[str]) -> torch.Tensor:
    import open_clip

    return open_clip.tokenize(list(prompts), context_length=context_length(model)).to(_device(model))


def encode_text(model, prompts: Sequence[str]) -> torch.Tensor:
    """Unit-norm text embeddings ``[B, D]`` (float32)."""
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenize(model, prompts)).float(), dim=-1)


def encode_images(model, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm image embeddings ``[B, D]`` of images in ``[-1, 1]``; differentiable w.r.t. ``images``."""
    from studio.ml.clip_features import to_clip_input

    dtype = next(model.parameters()).dtype
    pixels = to_clip_input(images.to(dtype), model, mapping="clean")
    return F.normalize(model.encode_image(pixels).float(), dim=-1)
