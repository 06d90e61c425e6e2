"""Features from a frozen open_clip model, computed the way GALIP computes them.

open_clip's ``encode_text``/``encode_image`` give the pooled embeddings; GALIP also needs
what happens in between: the un-normalised sentence embedding at the end-of-text token, the
patch tokens after chosen vision blocks, and the exact image -> CLIP-input mapping of the
official code. Each function here is tested against open_clip's own forward.

Images enter as float tensors ``[B,3,H,W]`` in ``[-1, 1]`` (a generator's output range).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

#: The normalisation constants of OpenAI's CLIP (also open_clip's default).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: ``galip``: the official mapping (CLIP sees 0.75 + 0.25 * x, see :func:`to_clip_input`).
#: ``clean``: x in [-1, 1] mapped to [0, 1] once, as CLIP was trained.
MAPPINGS = ("galip", "clean")


# ---- text -------------------------------------------------------------------------------------


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
    """open_clip's tokenizer: over-long prompts are cut with end-of-text forced into the last slot."""
    import open_clip

    return open_clip.tokenize([texts] if isinstance(texts, str) else list(texts), context_length=context_length)


def tokenize_for(model, texts: str | Sequence[str]) -> torch.Tensor:
    """Tokens sized to ``model``'s text context, on the model's device."""
    device = model.token_embedding.weight.device
    return tokenize(texts, context_length=model.context_length).to(device)


def _run_blocks(transformer, x: torch.Tensor, attn_mask: torch.Tensor | None = None):
    """Yield the token sequence ``[B, L, C]`` after each block, whatever the block layout.

    open_clip >= 2.26 transformers are batch-first; older ones (and OpenAI's) are
    sequence-first. The caller always sees batch-first tensors.
    """
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in transformer.resblocks:
        x = block(x, attn_mask=attn_mask)
        yield x if batch_first else x.transpose(0, 1)


def text_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token text features after ``ln_final``: ``[B, L, width]`` (causal mask applied)."""
    dtype = model.token_embedding.weight.dtype
    x = model.token_embedding(tokens).to(dtype) + model.positional_embedding.to(dtype)
    for x in _run_blocks(model.transformer, x, attn_mask=model.attn_mask):
        pass
    return model.ln_final(x)


def sentence_embedding(model, tokens: torch.Tensor) -> torch.Tensor:
    """GALIP's sentence embedding: the end-of-text token (argmax of ids) @ text_projection.

    Not L2-normalised: GALIP conditions its generator on the raw vector.
    """
    x = text_tokens(model, tokens)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def text_embedding(model, tokens: torch.Tensor) -> torch.Tensor:
    """Unit-norm text embedding (what CLIP scores use)."""
    return F.normalize(sentence_embedding(model, tokens), dim=-1)


# ---- images -----------------------------------------------------------------------------------


def clip_image_size(model) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _norm_constants(model, device, dtype):
    mean = getattr(model.visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(model.visual, "image_std", None) or OPENAI_STD
    mean = torch.tensor(mean, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=device, dtype=dtype).view(1, 3, 1, 1)
    return mean, std


def to_clip_input(images: torch.Tensor, model, mapping: str = "galip") -> torch.Tensor:
    """Map images in [-1, 1] to CLIP's normalised input at its resolution.

    ``galip`` reproduces the official code exactly: ``x*0.5+0.5``, nearest resize, then
    ``((x+1)*0.5 - mean)/std`` again, so CLIP sees ``0.75 + 0.25*x``. Official checkpoints were
    trained through it (D features, the similarity loss), so parity needs it. ``clean`` maps
    once, ``(x+1)/2``, and resizes with antialiased bilinear when the size differs.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images [B,3,H,W], got shape {tuple(images.shape)}")
    size = clip_image_size(model)
    mean, std = _norm_constants(model, images.device, images.dtype)
    if mapping == "galip":
        x = F.interpolate(images * 0.5 + 0.5, size=(size, size))
        return ((x + 1) * 0.5 - mean) / std
    if mapping == "clean":
        x = (images + 1) * 0.5
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (x - mean) / std
    raise ValueError(f"unknown image mapping {mapping!r} (expected one of {', '.join(MAPPINGS)})")


def vision_embed(visual, pixels: torch.Tensor) -> torch.Tensor:
    """Patch embedding + class token + positional embedding + ln_pre: ``[B, 1+grid*grid, width]``."""
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    return embed_patch_map(visual, x)


def embed_patch_map(visual, patch_map: torch.Tensor) -> torch.Tensor:
    """Token sequence for a ``[B, width, grid, grid]`` map, as if it came from ``conv1``.

    GALIP's generator feeds its own fused feature map through the frozen trunk this way.
    """
    b, c = patch_map.shape[:2]
    x = patch_map.reshape(b, c, -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(x)


def tokens_to_map(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Patch tokens ``[B, grid*grid, C]`` (class token already dropped) -> ``[B, C, grid, grid]``."""
    return tokens.permute(0, 2, 1).reshape(tokens.shape[0], tokens.shape[2], grid, grid)


def image_features(model, pixels: torch.Tensor, taps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch-token maps after blocks ``taps`` and the global image embedding.

    ``pixels`` is CLIP input (see :func:`to_clip_input`). Returns ``([B, len(taps), width, grid,
    grid], [B, embed_dim])``; the embedding is ``ln_post(CLS) @ proj``, not normalised.
    """
    visual = model.visual
    x = vision_embed(visual, pixels)
    grid = int(round((x.shape[1] - 1) ** 0.5))
    maps = []
    wanted = set(taps)
    for index, x in enumerate(_run_blocks(visual.transformer, x)):
        if index in wanted:
            maps.append(tokens_to_map(x[:, 1:], grid))
    if len(maps) != len(wanted):
        raise ValueError(f"tap blocks {list(taps)} outside the {index + 1} vision blocks")
    if getattr(visual, "pool_type", "tok") == "tok" and getattr(visual, "attn_pool", None) is None \
            and not getattr(visual, "final_ln_after_pool", False):
        pooled = visual.ln_post(x[:, 0])  # the official (OpenAI) pooling, written as GALIP does
    else:
        pooled, _ = visual._pool(x)  # other open_clip poolings (average, attention pooling)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return torch.stack(maps, dim=1), pooled


def image_embedding(model, pixels: torch.Tensor) -> torch.Tensor:
    """Global image embedding of CLIP input ``pixels`` (un-normalised), as ``encode_image``."""
    return model.encode_image(pixels.to(model.visual.conv1.weight.dtype))


def clip_score(model, images: torch.Tensor, tokens: torch.Tensor, mapping: str = "galip") -> torch.Tensor:
    """Cosine similarity of each image (in [-1, 1]) with its prompt: ``[B]``."""
    img = F.normalize(image_embedding(model, to_clip_input(images, model, mapping)), dim=-1)
    return (img * text_embedding(model, tokens)).sum(dim=-1)
