"""Stage 2 of CLIP-GEN: a GPT over VQGAN tokens, conditioned on one CLIP embedding.

Decoder-only, causal, pre-LayerNorm, GELU, in the style of nanoGPT. The sequence for a grid of
``g x g`` tokens in raster order is

    position:  0        1     2     ...  g*g-1
    input:     [cond]   t0    t1    ...  t(g*g-2)
    predicts:  t0       t1    t2    ...  t(g*g-1)

where ``cond`` is the L2-normalised CLIP embedding projected by one Linear (with bias). So the
block size is exactly ``g*g`` and no special tokens exist. During training the condition is a
CLIP *image* embedding, at inference a *text* embedding: the normalisation happens inside the
model so the two can never be fed at different scales. A model with ``null_condition`` also
learns one prefix vector that stands for "no condition" (trained by dropping the condition of
some rows, ``--cond-drop``), which classifier-free guidance samples against.

Sampling (:func:`sample`) keeps a key/value cache so each new token costs one position, and draws
every image's tokens from its own CPU ``torch.Generator`` with exactly one uniform number per
token, so an image's tokens depend only on its seed, whatever else is in the batch.

The public clip-gen reimplementation's ``gpt2_medium`` uses ``nn.TransformerEncoderLayer`` blocks;
:func:`clipgen_to_ours` maps its state dict onto this module (the mapping is one-to-one, see there).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class GPTConfig:
    n_codes: int = 1024  # VQGAN codebook size = vocabulary
    grid: int = 16  # token grid side; block size = grid * grid
    width: int = 512
    n_layers: int = 8
    n_heads: int = 8
    clip_dim: int = 512
    dropout: float = 0.0
    null_condition: bool = False  # a learned "no condition" prefix, for classifier-free guidance

    def __post_init__(self) -> None:
        if self.width % self.n_heads:
            raise ValueError(f"width {self.width} is not divisible by n_heads {self.n_heads}")

    @property
    def block_size(self) -> int:
        return self.grid * self.grid

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: The reimplementation's size (GPT-2 medium) over a 16x16 grid of 16384 codes, ViT-B/32 CLIP.
GPT2_MEDIUM_16384 = GPTConfig(n_codes=16384, grid=16, width=1024, n_layers=24, n_heads=16, clip_dim=512, dropout=0.1)


class KVCache:
    """Keys and values of every layer for positions ``[0, length)``, preallocated to the block size."""

    def __init__(self, cfg: GPTConfig, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch, cfg.n_heads, cfg.block_size, cfg.width // cfg.n_heads)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Multi-head attention with q, k, v stacked in one Linear (the layout of ``nn.MultiheadAttention``)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, length, c = x.shape
        q, k, v = (t.view(b, length, self.n_heads, c // self.n_heads).transpose(1, 2) for t in self.qkv(x).split(c, dim=2))
        start = 0
        if cache is not None:
            start = cache.length
            cache.keys[layer][:, :, start : start + length] = k
            cache.values[layer][:, :, start : start + length] = v
            k, v = cache.keys[layer][:, :, : start + length], cache.values[layer][:, :, : start + length]
        # query i (at absolute position start+i) may see keys 0..start+i
        dropout = self.dropout if self.training else 0.0
        if cache is None and length > 1:
            # the whole sequence at once (training): the causal kernel, a fifth faster than a mask
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            mask = None
            if length > 1:
                mask = torch.ones(length, start + length, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, length, c)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.width, 4 * cfg.width)
        self.proj = nn.Linear(4 * cfg.width, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_size, cfg.width))
        self.tok_emb = nn.Embedding(cfg.n_codes, cfg.width)
        self.cond_proj = nn.Linear(cfg.clip_dim, cfg.width)
        if cfg.null_condition:
            self.null_cond = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.n_codes)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))  # GPT-2's residual scaling
        nn.init.normal_(self.pos_emb, std=0.02)
        if cfg.null_condition:
            nn.init.normal_(self.null_cond, std=0.02)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def condition(self, cond: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """The prefix token for a CLIP embedding ``[B, clip_dim]`` (normalised here): ``[B, 1, width]``.

        ``drop [B]`` (bool) puts the learned null condition in place of a row's embedding.
        """
        x = self.cond_proj(F.normalize(cond.to(self.cond_proj.weight.dtype), dim=-1)).unsqueeze(1)
        if drop is None:
            return x
        if not self.config.null_condition:
            raise ValueError("this transformer has no null condition (it was trained without condition dropout)")
        return torch.where(drop.view(-1, 1, 1), self.null_cond.to(x.dtype).expand_as(x), x)

    def _run(self, x: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        start = cache.length if cache is not None else 0
        x = self.drop(x + self.pos_emb[:, start : start + x.shape[1]])
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += x.shape[1]
        return self.head(self.ln_f(x))

    def forward(self, cond: torch.Tensor, tokens: torch.Tensor | None = None, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T+1, n_codes]`` for the prefix and ``tokens [B, T]`` (``T < block_size``).

        ``logits[:, i]`` predicts token ``i``; for training pass ``tokens[:, :-1]`` and compare
        with all tokens. ``drop``: rows conditioned on the null condition (see :meth:`condition`).
        """
        x = self.condition(cond, drop)
        if tokens is not None and tokens.shape[1]:
            if tokens.shape[1] >= self.config.block_size:
                raise ValueError(f"at most {self.config.block_size - 1} input tokens, got {tokens.shape[1]}")
            x = torch.cat([x, self.tok_emb(tokens)], dim=1)
        return self._run(x, None)

    def start(self, cond: torch.Tensor, cache: KVCache, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Fill the cache with the prefix; returns the logits for token 0: ``[B, n_codes]``."""
        if cache.length:
            raise ValueError("start() needs an empty cache")
        return self._run(self.condition(cond, drop), cache)[:, -1]

    def step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append one token per row ``[B]``; returns the logits for the next one: ``[B, n_codes]``."""
        if cache.length >= self.config.block_size:
            raise ValueError("the cache is full")
        return self._run(self.tok_emb(token[:, None]), cache)[:, -1]


# ---- sampling ----------------------------------------------------------------------------------------


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k (0 = off), then nucleus top-p (1 = off); removed entries become -inf."""
    logits = logits.float() / max(temperature, 1e-6)
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative - sorted_logits.softmax(dim=-1) > top_p  # keeps the token that crosses top_p
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def draw(logits: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row by inverse CDF, using exactly one uniform draw from that row's generator.

    One draw per token keeps every generator's stream aligned with the token position, so an
    image's tokens never depend on its batch neighbours (or on top-k/top-p changing the support).
    """
    probs = logits.double().softmax(dim=-1).cpu()
    cdf = probs.cumsum(dim=-1)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    index = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    last_nonzero = probs.shape[1] - 1 - (probs.flip(1) > 0).to(torch.int64).argmax(dim=1)
    return torch.minimum(index, last_nonzero).to(logits.device)


@torch.no_grad()
def sample(
    model: GPT,
    cond: torch.Tensor,
    generators: Sequence[torch.Generator],
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    use_cache: bool = True,
    guidance: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Token grids ``[B, block_size]`` for CLIP embeddings ``cond [B, clip_dim]``, one generator per row.

    ``progress(done, total)`` is called after every token; an exception it raises (a canceled
    job) stops sampling there. ``use_cache=False`` recomputes the whole prefix each step, as the
    reimplementation does (kept for the benchmark and the equality test).

    ``guidance`` != 1 is classifier-free guidance: every row is also run on the null condition
    (twice the rows, in one batch) and sampled from ``uncond + guidance * (cond - uncond)``
    logits; 1 runs the conditional rows alone, exactly as a model without a null condition.
    """
    if len(generators) != cond.shape[0]:
        raise ValueError(f"{cond.shape[0]} conditions but {len(generators)} generators")
    if guidance != 1.0 and not model.config.null_condition:
        raise ValueError("guidance needs a transformer trained with condition dropout (it has no null condition)")
    total, rows = model.config.block_size, cond.shape[0]
    drop = None
    if guidance != 1.0:  # rows [0, B) conditioned, [B, 2B) on the null condition
        cond = torch.cat([cond, cond])
        drop = torch.arange(2 * rows, device=cond.device) >= rows

    def guided(logits: torch.Tensor) -> torch.Tensor:
        if drop is None:
            return logits
        conditional, unconditional = logits[:rows].float(), logits[rows:].float()
        return unconditional + guidance * (conditional - unconditional)

    tokens = torch.zeros(cond.shape[0], 0, dtype=torch.long, device=cond.device)
    cache = KVCache(model.config, cond.shape[0], cond.device, model.head.weight.dtype) if use_cache else None
    logits = model.start(cond, cache, drop) if cache is not None else model(cond, drop=drop)[:, -1]
    for i in range(total):
        token = draw(filter_logits(guided(logits), temperature, top_k, top_p), generators)
        if drop is not None:
            token = torch.cat([token, token])
        tokens = torch.cat([tokens, token[:, None]], dim=1)
        if progress is not None:
            progress(i + 1, total)
        if i + 1 == total:
            break
        logits = model.step(token, cache) if cache is not None else model(cond, tokens, drop)[:, -1]
    return tokens[:rows]


# ---- the clip-gen reimplementation's layout ------------------------------------------------------------
#
#   clip-gen gpt2_medium                        this module
#   pos_emb [1, 256, W]                          pos_emb
#   tok_emb.weight                               tok_emb.weight
#   cond_proj.{weight,bias}                      cond_proj.{weight,bias}
#   blocks.N.mask (bool causal mask buffer)      (dropped: the mask is built on the fly)
#   blocks.N.encoder.self_attn.in_proj_*         blocks.N.attn.qkv.*      (q, k, v stacked the same way)
#   blocks.N.encoder.self_attn.out_proj.*        blocks.N.attn.proj.*
#   blocks.N.encoder.linear1.* / linear2.*       blocks.N.mlp.fc.* / mlp.proj.*
#   blocks.N.encoder.norm1.* / norm2.*           blocks.N.ln_1.* / ln_2.*
#   norm.* / head.*                              ln_f.* / head.*
#
# This is exact if the reimplementation's nn.TransformerEncoderLayer runs with norm_first=True and
# activation="gelu" (pre-LN GPT-2 blocks, as the paper describes); the key manifest cannot show
# those two flags, so check a real checkpoint's samples before trusting an import.

_CLIPGEN_RENAMES = [
    (r"blocks\.(\d+)\.encoder\.self_attn\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"blocks\.(\d+)\.encoder\.self_attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"blocks\.(\d+)\.encoder\.linear1\.", r"blocks.\1.mlp.fc."),
    (r"blocks\.(\d+)\.encoder\.linear2\.", r"blocks.\1.mlp.proj."),
    (r"blocks\.(\d+)\.encoder\.norm1\.", r"blocks.\1.ln_1."),
    (r"blocks\.(\d+)\.encoder\.norm2\.", r"blocks.\1.ln_2."),
    (r"norm\.", "ln_f."),
]


def clipgen_to_ours(state: dict[str, torch.Tensor], n_heads: int | None = None) -> tuple[dict[str, torch.Tensor], GPTConfig]:
    """Re-key a clip-gen GPT state dict and infer its config from the shapes.

    ``n_heads`` cannot be read from shapes; it defaults to ``width // 64`` (16 for GPT-2 medium).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if re.fullmatch(r"blocks\.\d+\.mask", key):
            continue
        new = key
        for pattern, repl in _CLIPGEN_RENAMES:
            new, count = re.subn("^" + pattern, repl, new)
            if count:
                break
        out[new] = value
    try:
        n_codes, width = out["tok_emb.weight"].shape
        block_size = out["pos_emb"].shape[1]
        clip_dim = out["cond_proj.weight"].shape[1]
    except KeyError as exc:
        raise ValueError(f"not a clip-gen GPT state dict (missing {exc.args[0]!r})") from None
    grid = math.isqrt(block_size)
    if grid * grid != block_size:
        raise ValueError(f"block size {block_size} is not a square token grid")
    n_layers = len({k.split(".")[1] for k in out if k.startswith("blocks.")})
    cfg = GPTConfig(n_codes=n_codes, grid=grid, width=width, n_layers=n_layers,
                    n_heads=n_heads or max(1, width // 64), clip_dim=clip_dim)
    return out, cfg
