"""Stage 1 of CLIP-GEN: a VQGAN whose modules and state-dict keys match taming-transformers.

The module tree mirrors ``taming.models.vqgan.VQModel`` (minus its training-only ``loss``)
name for name, so a taming checkpoint loads with ``strict=True`` and no re-keying: the key
manifests in ``shared/reference/taming`` are the test. One difference is deliberate:
:meth:`VQModel.decode_indices` looks codes up and reshapes them itself, because taming's own
``decode_code`` path is broken upstream.

GroupNorm's eps is configurable because the public clip-gen reimplementation trains the same
network with PyTorch's default 1e-5 instead of taming's 1e-6 (see ``checkpoints.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class VQConfig:
    """taming's ``ddconfig`` plus the quantiser settings (``n_embed``, ``embed_dim``, ``beta``).

    Defaults are the ImageNet f16 model: 256px in, 16x16 token grid out.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 256
    double_z: bool = False
    dropout: float = 0.0
    n_embed: int = 1024
    embed_dim: int = 256
    beta: float = 0.25
    eps: float = 1e-6
    norm_groups: int = 32
    #: ``taming``: zero-pad right and bottom, then a stride-2 3x3 conv (every taming checkpoint), which
    #: centres each output half a pixel down and right of the 2x2 pixels it stands for (a code of an
    #: f4 model 1.5 pixels off); ``centred``: a 4x4 stride-2 conv padded one on every side, centred
    downsample_padding: str = "taming"

    def __post_init__(self) -> None:
        if self.downsample_padding not in ("taming", "centred"):
            raise ValueError(f"downsample_padding must be 'taming' or 'centred', not {self.downsample_padding!r}")
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        for width in {self.ch * m for m in self.ch_mult}:
            if width % self.norm_groups:
                raise ValueError(f"channel width {width} is not divisible by norm_groups={self.norm_groups}")
        if self.resolution % self.factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling factor {self.factor}")

    @property
    def factor(self) -> int:
        """Spatial downsampling factor (16 for ``f16``)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        """Side of the token grid for an image of ``resolution`` pixels."""
        return self.resolution // self.factor

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ch_mult"] = list(self.ch_mult)
        data["attn_resolutions"] = list(self.attn_resolutions)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VQConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_taming_yaml(cls, config: dict[str, Any]) -> "VQConfig":
        """Read a taming ``model.params`` block (the yaml shipped next to each checkpoint)."""
        params = config.get("model", config).get("params", config)
        try:
            dd = params["ddconfig"]
            extra = {"n_embed": params["n_embed"], "embed_dim": params["embed_dim"]}
        except (KeyError, TypeError, AttributeError):
            raise ValueError("not a taming VQGAN config (expected model.params.ddconfig, n_embed, embed_dim)") from None
        if "beta" in params:
            extra["beta"] = params["beta"]
        return cls.from_dict({**dd, **extra})


F16_16384 = VQConfig(n_embed=16384)
F16_1024 = VQConfig(n_embed=1024)


# ---- convolutions that give every image of a batch the bits it gets alone -----------------------------
#
# PyTorch picks a CPU convolution backend by shape, and the batch size is part of that choice: a batch
# of one image runs small 3x3 and all 1x1 convolutions through the native im2col+GEMM kernel
# (``thnn_conv2d``) and larger ones through oneDNN, while a batch of two or more sends them all to
# oneDNN. Each backend on its own computes an image the same way whatever the batch (tested), so a
# batch is bit-identical to decoding its images one at a time if every convolution runs on the backend
# that a single image would get. Which backend that is is not guessed from PyTorch's rule: the first
# time a shape is seen, one image is convolved through ``F.conv2d`` and through each backend, and the
# one that matches it bit for bit (checked on the first and the last image of the batch) is remembered
# for that shape; when none matches, the batch is convolved one image at a time.

_BATCH_OF_ONE: contextvars.ContextVar[bool] = contextvars.ContextVar("vqgan_batch_of_one", default=False)
_BACKEND: dict[tuple, str] = {}


@contextlib.contextmanager
def batch_of_one_numerics():
    """Inside: every ``Conv2d`` of this module computes each image of a batch exactly as alone."""
    token = _BATCH_OF_ONE.set(True)
    try:
        yield
    finally:
        _BATCH_OF_ONE.reset(token)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and keys) that honours :func:`batch_of_one_numerics`."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (not _BATCH_OF_ONE.get() or input.dim() != 4 or input.shape[0] == 1 or self.padding_mode != "zeros"
                or isinstance(self.padding, str)):
            return super()._conv_forward(input, weight, bias)
        return self._as_batch_of_one(input, weight, bias)

    def _one(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _backends(self, weight, bias) -> dict[str, Any]:
        out = {}
        if torch.backends.mkldnn.is_available():
            out["onednn"] = lambda x: torch.ops.aten.mkldnn_convolution(
                x, weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups)
        if self.groups == 1 and tuple(self.dilation) == (1, 1):
            out["native"] = lambda x: torch._C._nn.thnn_conv2d(
                x, weight, list(self.kernel_size), bias, list(self.stride), list(self.padding))
        return out

    def _as_batch_of_one(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device.type, x.is_contiguous(), tuple(weight.shape), tuple(self.stride),
               tuple(self.padding), tuple(self.dilation), self.groups, bias is not None, torch.get_num_threads(),
               torch.backends.mkldnn.enabled, torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        backends = self._backends(weight, bias)
        name = _BACKEND.get(key)
        if name is None:
            name = "loop"
            if not key[-1] and x.device.type == "cpu":  # calibrate without autograd only
                first, last = self._one(x[:1], weight, bias), self._one(x[-1:], weight, bias)
                for candidate, run in backends.items():
                    try:
                        out = run(x)
                    except RuntimeError:
                        continue
                    if torch.equal(out[:1], first) and torch.equal(out[-1:], last):
                        name = candidate
                        break
            _BACKEND[key] = name
        if name in backends:
            return backends[name](x)
        return torch.cat([self._one(x[i : i + 1], weight, bias) for i in range(x.shape[0])])


def _norm(channels: int, cfg: VQConfig) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=cfg.norm_groups, num_channels=channels, eps=cfg.eps, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """norm, swish, conv3x3, norm, swish, dropout, conv3x3; a 1x1 ``nin_shortcut`` only if widths differ."""

    def __init__(self, in_channels: int, out_channels: int, cfg: VQConfig) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, cfg)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1 q/k/v/proj_out convolutions."""

    def __init__(self, channels: int, cfg: VQConfig) -> None:
        super().__init__()
        self.norm = _norm(channels, cfg)
        self.q = Conv2d(channels, channels, 1)
        self.k = Conv2d(channels, channels, 1)
        self.v = Conv2d(channels, channels, 1)
        self.proj_out = Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q, k, v = (conv(h).reshape(b, c, hh * ww).transpose(1, 2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, hh, ww))


class Downsample(nn.Module):
    """A stride-2 3x3 conv after taming's asymmetric zero pad (right, bottom), or a centred 4x4 one.

    An odd kernel at stride 2 cannot be centred on a 2x2 block: padded on one side it leans half a
    pixel that way. A 4x4 kernel padded one on each side covers pixels 2i-1..2i+2, centred on 2i+0.5.
    """

    def __init__(self, channels: int, padding: str = "taming") -> None:
        super().__init__()
        self.centred = padding == "centred"
        self.conv = Conv2d(channels, channels, 4 if self.centred else 3, stride=2, padding=1 if self.centred else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x if self.centred else F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level (taming builds these as bare ``nn.Module`` s with these attribute names)."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample is not None:
            setattr(self, name, resample)


class _Mid(nn.Module):
    def __init__(self, channels: int, cfg: VQConfig) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, cfg)
        self.attn_1 = AttnBlock(channels, cfg)
        self.block_2 = ResnetBlock(channels, channels, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.num_resolutions = len(cfg.ch_mult)
        self.conv_in = Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1, *cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            block_in, block_out = cfg.ch * in_mult[level], cfg.ch * mult
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, cfg))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in, cfg))
            last = level == self.num_resolutions - 1
            self.down.append(_Level(blocks, attns, None if last else Downsample(block_in, cfg.downsample_padding), "downsample"))
            res = res if last else res // 2
        self.mid = _Mid(block_in, cfg)
        self.norm_out = _norm(block_in, cfg)
        self.conv_out = Conv2d(block_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """``up`` is indexed by level like the encoder's ``down``, but runs from the last level to the first."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.num_resolutions = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.grid
        self.conv_in = Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, cfg)
        levels: list[_Level] = []
        for level in reversed(range(self.num_resolutions)):
            block_out = cfg.ch * cfg.ch_mult[level]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, cfg))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in, cfg))
            levels.insert(0, _Level(blocks, attns, Upsample(block_in) if level else None, "upsample"))
            res = res * 2 if level else res
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, cfg)
        self.conv_out = Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class Quantized(NamedTuple):
    z_q: torch.Tensor  # [B, C, h, w], straight-through: gradients flow to the encoder
    loss: torch.Tensor  # codebook + beta-weighted term (legacy placement), scalar
    indices: torch.Tensor  # [B, h, w], int64


class VectorQuantizer(nn.Module):
    """taming's ``VectorQuantizer2`` in legacy mode (the mode of its released checkpoints).

    Legacy mode puts ``beta`` on the codebook term: ``mean((sg(z_q)-z)^2) + beta*mean((z_q-sg(z))^2)``.
    It is kept so that fine-tuning a taming checkpoint continues the objective it was trained with.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float) -> None:
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code by L2; ``argmin`` returns the first index on ties."""
        codes = self.embedding.weight
        d = z_flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * z_flat @ codes.t()
        return d.argmin(dim=1)

    def forward(self, z: torch.Tensor) -> Quantized:
        # the nearest-code search and the codebook loss stay float32 under mixed precision: in
        # bfloat16 the distances of near-equal codes tie and the choice of code becomes noise
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor) -> Quantized:
        b, c, h, w = z.shape
        z_hwc = z.permute(0, 2, 3, 1)
        indices = self.nearest(z_hwc.reshape(-1, c))
        z_q = self.embedding(indices).view(b, h, w, c)
        loss = torch.mean((z_q.detach() - z_hwc) ** 2) + self.beta * torch.mean((z_q - z_hwc.detach()) ** 2)
        z_q = z_hwc + (z_q - z_hwc).detach()
        return Quantized(z_q.permute(0, 3, 1, 2).contiguous(), loss, indices.view(b, h, w))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for flat row-major ``[B, h*w]`` or ``[B, h, w]`` indices -> ``[B, C, h, w]``."""
        if indices.dim() == 2:
            side = int(round(indices.shape[1] ** 0.5))
            if side * side != indices.shape[1]:
                raise ValueError(f"{indices.shape[1]} indices do not form a square grid; pass [B, h, w]")
            indices = indices.view(indices.shape[0], side, side)
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    """Encoder -> quant_conv -> quantize -> post_quant_conv -> Decoder; images in ``[-1, 1]``."""

    def __init__(self, cfg: VQConfig = F16_1024) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)
        self.quant_conv = Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> Quantized:
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices (flat row-major ``[B, h*w]`` or ``[B, h, w]``) -> images ``[B, 3, H, W]``."""
        return self.decode(self.quantize.lookup(indices))

    def decode_indices_as_alone(self, indices: torch.Tensor, batch: int = 8) -> torch.Tensor:
        """``decode_indices`` in batches of ``batch`` rows, each image bit-identical to decoding it alone
        (``decode_indices(row[None])``): what generation needs, since an image must not depend on what
        it was batched with. See :func:`batch_of_one_numerics`."""
        with batch_of_one_numerics():
            return torch.cat([self.decode_indices(indices[k : k + batch]) for k in range(0, indices.shape[0], batch)])

    @torch.no_grad()
    def encode_to_indices(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> flat row-major token indices ``[B, h*w]`` (what the transformer models)."""
        return self.encode(x).indices.flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        q = self.encode(x)
        return self.decode(q.z_q), q


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
