"""GALIP's three networks: the generator NetG, the discriminator NetD and the critic NetC.

One code builds both the official configuration (CLIP ViT-B/32, 224x224 output, state-dict
keys and shapes equal to the official checkpoints so they load strictly) and small ones that
follow a small CLIP. Everything that depends on the CLIP (trunk width, patch grid, depth, which
blocks are tapped for D and which receive prompts) comes from :class:`GalipConfig`.

Read top to bottom: the config, the conditional building blocks (Affine, FuseBlock), the
generator's CLIP adapter (MBlock, ClipTrunk, ClipAdapter), the generator (GBlock, NetG), then
the discriminator (DBlock, NetD) and the critic (NetC). Module and attribute names are the
official ones because they are the checkpoint keys.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from studio.ml.clip_features import embed_patch_map, tokens_to_map

#: Official tap and prompt blocks, for a 12-block CLIP ViT.
OFFICIAL_DEPTH = 12
OFFICIAL_TAPS = (1, 4, 8)
OFFICIAL_PROMPT_RANGE = (1, 8)

#: How the sentence embedding is scaled before it conditions G, C and the MA-GP.
#: ``raw``: as the official code (the un-normalised CLIP text feature).
#: ``sqrt_dim``: L2-normalised then times sqrt(dim), so each component is about unit size like
#: the noise it is concatenated to. Small CLIPs trained with a contrastive loss give text
#: features whose norm says nothing; without this the generator ignores the prompt.
COND_SCALES = ("raw", "sqrt_dim")


def _scaled_block(index: int, depth: int) -> int:
    """Map an official block index (of 12) to a CLIP of ``depth`` blocks, rounding half up."""
    return min(depth - 1, max(0, int(index * depth / OFFICIAL_DEPTH + 0.5)))


def scaled_taps(depth: int) -> tuple[int, ...]:
    """Blocks whose patch tokens feed D: (1, 4, 8) for 12 blocks, scaled for other depths."""
    return tuple(sorted({_scaled_block(i, depth) for i in OFFICIAL_TAPS}))


def scaled_prompt_blocks(depth: int) -> tuple[int, ...]:
    """Blocks that get one prompt token each: 1..8 for 12 blocks, scaled for other depths."""
    first = max(1, _scaled_block(OFFICIAL_PROMPT_RANGE[0], depth)) if depth > 1 else 0
    last = _scaled_block(OFFICIAL_PROMPT_RANGE[1], depth)
    return tuple(range(first, max(first, last) + 1))


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(n)))


@dataclass(frozen=True)
class GalipConfig:
    """Everything that fixes the networks' shapes, plus how conditions and images are mapped.

    Defaults are the official COCO/CC12M configuration (CLIP ViT-B/32).
    """

    nz: int = 100  # noise dimensions
    ngf: int = 64  # generator width; G-block channels are ngf * (8, 8, 8, 8, 4, 2, 1)
    cond_dim: int = 512  # CLIP joint embedding size (the sentence embedding)
    clip_width: int = 768  # CLIP vision trunk width
    grid: int = 7  # CLIP patch grid (image size / patch size)
    clip_depth: int = 12  # CLIP vision blocks
    taps: tuple[int, ...] = OFFICIAL_TAPS
    prompt_blocks: tuple[int, ...] = tuple(range(1, 9))
    code_ch: int = 64  # channels of the noise map that enters the adapter
    mid_ch: int = 32  # M-block bottleneck channels
    m_blocks: int = 4
    image_size: int = 224  # output resolution (official: 224, CLIP's input size)
    d_ch: int = 512  # D's output channels (C's image input)
    c_hidden: int = 128
    mapping: str = "galip"  # image -> CLIP input, see studio.ml.clip_features.to_clip_input
    cond_scale: str = "raw"  # see COND_SCALES

    def __post_init__(self) -> None:
        if self.cond_scale not in COND_SCALES:
            raise ValueError(f"cond_scale must be one of {COND_SCALES}, got {self.cond_scale!r}")
        if not self.taps or max(self.taps) >= self.clip_depth:
            raise ValueError(f"taps {self.taps} must be blocks of a {self.clip_depth}-block CLIP")
        if self.prompt_blocks and max(self.prompt_blocks) >= self.clip_depth:
            raise ValueError(f"prompt blocks {self.prompt_blocks} exceed the CLIP depth {self.clip_depth}")
        if self.grid < 5:
            raise ValueError("the critic needs a CLIP grid of at least 5x5")

    @property
    def cond_total(self) -> int:
        """Width of the condition every affine layer sees: noise + sentence embedding."""
        return self.nz + self.cond_dim

    def block_sizes(self) -> list[int]:
        """Resize target of each G-block: doubling from the grid, the last one the output size.

        Official: 8, 16, 32, 64, 128, 224.
        """
        sizes, size = [], _pow2_ceil(self.grid)
        while size < _pow2_ceil(self.image_size):
            sizes.append(size)
            size *= 2
        return sizes + [self.image_size]

    def block_channels(self) -> list[tuple[int, int]]:
        """(in, out) channels of each G-block. Official: 512->512->512->512->256->128->64."""
        n = len(self.block_sizes()) + 1
        chans = [self.ngf * min(2**i, 8) for i in range(n)][::-1]
        return list(zip(chans[:-1], chans[1:]))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["taps"], data["prompt_blocks"] = list(self.taps), list(self.prompt_blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "GalipConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GALIP config keys: {', '.join(unknown)}")
        data = dict(data)
        for key in ("taps", "prompt_blocks"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def for_clip(cls, clip, **overrides) -> "GalipConfig":
        """A config that follows an open_clip model: width, grid, depth, embedding size.

        Taps and prompt blocks scale with depth; the output size defaults to CLIP's input size.
        """
        visual = clip.visual
        size = visual.image_size
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        patch = visual.conv1.kernel_size[0]
        depth = len(visual.transformer.resblocks)
        values = dict(
            cond_dim=int(visual.proj.shape[1]) if visual.proj is not None else visual.conv1.out_channels,
            clip_width=visual.conv1.out_channels,
            grid=size // patch,
            clip_depth=depth,
            taps=scaled_taps(depth),
            prompt_blocks=scaled_prompt_blocks(depth),
            image_size=size,
        )
        values.update(overrides)
        return cls(**values)


def condition(sent_emb: torch.Tensor, cond_scale: str) -> torch.Tensor:
    """The sentence embedding as the networks see it (see :data:`COND_SCALES`)."""
    if cond_scale == "raw":
        return sent_emb
    return F.normalize(sent_emb, dim=-1) * math.sqrt(sent_emb.shape[-1])


# ---- conditional blocks -----------------------------------------------------------------------


class Affine(nn.Module):
    """y = gamma(c) * x + beta(c); gamma starts at 1 and beta at 0 (identity at init)."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.fc_gamma = self._mlp(cond_dim, channels)
        self.fc_beta = self._mlp(cond_dim, channels)
        nn.init.zeros_(self.fc_gamma.linear2.weight)
        nn.init.ones_(self.fc_gamma.linear2.bias)
        nn.init.zeros_(self.fc_beta.linear2.weight)
        nn.init.zeros_(self.fc_beta.linear2.bias)

    @staticmethod
    def _mlp(cond_dim: int, channels: int) -> nn.Sequential:
        return nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(cond_dim, channels)),
            ("relu1", nn.ReLU()),
            ("linear2", nn.Linear(channels, channels)),
        ]))

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, beta), each [B, channels, 1, 1]."""
        return self.fc_gamma(c)[:, :, None, None], self.fc_beta(c)[:, :, None, None]

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.modulation(c)
        return gamma * x + beta


class FuseBlock(nn.Module):
    """Two affine transforms, each followed by LeakyReLU(0.2) (the official DFBLK)."""

    slope = 0.2

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.affine0 = Affine(cond_dim, channels)
        self.affine1 = Affine(cond_dim, channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.affine0(x, c), self.slope)
        return F.leaky_relu(self.affine1(x, c), self.slope)


# ---- generator: the CLIP adapter ----------------------------------------------------------------


class MBlock(nn.Module):
    """Adapter block: conv -> fuse -> conv -> fuse, plus the input (1x1 conv if channels change)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, cond_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, 1, 1)
        self.fuse1 = FuseBlock(cond_dim, mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, out_ch, 3, 1, 1)
        self.fuse2 = FuseBlock(cond_dim, out_ch)
        if in_ch != out_ch:
            self.c_sc = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.fuse2(self.conv2(self.fuse1(self.conv1(x), c)), c)
        shortcut = self.c_sc(x) if hasattr(self, "c_sc") else x
        return shortcut + h


class ClipTrunk(nn.Module):
    """The frozen CLIP ViT blocks, run on a generated feature map with learned prompt tokens.

    Holds (shares, does not copy) the CLIP vision tower's class and positional embeddings,
    ``conv1`` (never used, but in the official state dict), ``ln_pre`` and the transformer.
    """

    def __init__(self, visual: nn.Module, prompt_blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.conv1 = visual.conv1
        self.ln_pre = visual.ln_pre
        self.transformer = visual.transformer
        self.prompt_blocks = tuple(prompt_blocks)
        self.requires_grad_(False)

    def forward(self, feature_map: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """``[B, width, grid, grid]`` + ``[B, n_prompts, width]`` -> ``[B, width, grid, grid]``.

        The i-th prompt is appended as an extra last token (no positional embedding) before
        the i-th prompted block and dropped after it.
        """
        dtype = self.conv1.weight.dtype
        grid = feature_map.shape[-1]
        x = embed_patch_map(self, feature_map.to(dtype))
        prompts = prompts.to(dtype)
        batch_first = getattr(self.transformer, "batch_first", True)
        if not batch_first:
            x, prompts = x.transpose(0, 1), prompts.transpose(0, 1)
        seq_dim = 1 if batch_first else 0
        prompt_index = 0
        for i, block in enumerate(self.transformer.resblocks):
            if i in self.prompt_blocks:
                prompt = prompts.select(seq_dim, prompt_index).unsqueeze(seq_dim)
                prompt_index += 1
                x = block(torch.cat([x, prompt], dim=seq_dim)).narrow(seq_dim, 0, x.shape[seq_dim])
            else:
                x = block(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return tokens_to_map(x[:, 1:], grid).to(feature_map.dtype)


class ClipAdapter(nn.Module):
    """The official CLIP_Adapter ("mapping"): M-blocks, then the frozen trunk with prompts.

    out = conv(fuse + 0.1 * trunk(fuse, prompts)), fuse = conv_fuse(M-blocks(x)).
    """

    def __init__(self, cfg: GalipConfig, visual: nn.Module) -> None:
        super().__init__()
        self.width = cfg.clip_width
        self.FBlocks = nn.ModuleList(
            [MBlock(cfg.code_ch, cfg.mid_ch, cfg.code_ch, cfg.cond_total) for _ in range(cfg.m_blocks)]
        )
        self.conv_fuse = nn.Conv2d(cfg.code_ch, cfg.clip_width, 5, 1, 2)
        self.CLIP_ViT = ClipTrunk(visual, cfg.prompt_blocks)
        self.conv = nn.Conv2d(cfg.clip_width, cfg.block_channels()[0][0], 5, 1, 2)
        self.fc_prompt = nn.Linear(cfg.cond_total, cfg.clip_width * len(cfg.prompt_blocks))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        prompts = self.fc_prompt(c).view(c.shape[0], -1, self.width)
        for block in self.FBlocks:
            x = block(x, c)
        fuse = self.conv_fuse(x)
        return self.conv(fuse + 0.1 * self.CLIP_ViT(fuse, prompts))


# ---- generator --------------------------------------------------------------------------------


class GBlock(nn.Module):
    """Nearest resize to ``size``, then h + c2(fuse2(c1(fuse1(h)))); 1x1 shortcut if channels change."""

    def __init__(self, cond_dim: int, in_ch: int, out_ch: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.c1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.c2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.fuse1 = FuseBlock(cond_dim, in_ch)
        self.fuse2 = FuseBlock(cond_dim, out_ch)
        if in_ch != out_ch:
            self.c_sc = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(h, size=(self.size, self.size))
        shortcut = self.c_sc(h) if hasattr(self, "c_sc") else h
        return shortcut + self.c2(self.fuse2(self.c1(self.fuse1(h, c)), c))


class NetG(nn.Module):
    """noise [B, nz] + sentence embedding [B, cond_dim] -> image [B, 3, S, S], roughly in [-1, 1].

    No tanh: the official code clamps at sampling time.
    """

    def __init__(self, cfg: GalipConfig, visual: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc_code = nn.Linear(cfg.nz, cfg.grid * cfg.grid * cfg.code_ch)
        self.mapping = ClipAdapter(cfg, visual)
        self.GBlocks = nn.ModuleList(
            [GBlock(cfg.cond_total, i, o, s) for (i, o), s in zip(cfg.block_channels(), cfg.block_sizes())]
        )
        self.to_rgb = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(cfg.block_channels()[-1][1], 3, 3, 1, 1))

    def forward(self, noise: torch.Tensor, sent_emb: torch.Tensor) -> torch.Tensor:
        c = torch.cat([noise, sent_emb], dim=1)
        code = self.fc_code(noise).view(noise.shape[0], self.cfg.code_ch, self.cfg.grid, self.cfg.grid)
        out = self.mapping(code, c)
        for block in self.GBlocks:
            out = block(out, c)
        return self.to_rgb(out)

    def train(self, mode: bool = True) -> "NetG":
        super().train(mode)
        self.mapping.CLIP_ViT.eval()  # the trunk is frozen CLIP: always in eval mode
        return self

    def learnable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights GALIP trains: everything except the shared frozen CLIP trunk."""
        return {k: v for k, v in self.state_dict().items() if not is_trunk_key(k)}


def is_trunk_key(key: str) -> bool:
    return key.startswith("mapping.CLIP_ViT.")


# ---- discriminator and critic -----------------------------------------------------------------


class DBlock(nn.Module):
    """x' + gamma * residual(x) [+ beta * next CLIP feature]; gamma and beta start at 0.

    The 1x1 shortcut ``conv_s`` always exists (it is in the official state dict) but is applied
    only when channels change.
    """

    def __init__(self, fin: int, fout: int, clip_feat: bool) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        if clip_feat:
            self.beta = nn.Parameter(torch.zeros(1))
        self.conv_r = nn.Sequential(
            nn.Conv2d(fin, fout, 3, 1, 1, bias=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(fout, fout, 3, 1, 1, bias=False),
            nn.LeakyReLU(0.2),
        )
        self.conv_s = nn.Conv2d(fin, fout, 1)
        self.learned_shortcut = fin != fout

    def forward(self, x: torch.Tensor, clip_feat: torch.Tensor | None = None) -> torch.Tensor:
        res = self.conv_r(x)
        if self.learned_shortcut:
            x = self.conv_s(x)
        out = x + self.gamma * res
        if clip_feat is not None:
            out = out + self.beta * clip_feat
        return out


class NetD(nn.Module):
    """CLIP patch maps [B, n_taps, width, grid, grid] -> image features [B, d_ch, grid, grid]."""

    def __init__(self, cfg: GalipConfig) -> None:
        super().__init__()
        w = cfg.clip_width
        self.DBlocks = nn.ModuleList([DBlock(w, w, clip_feat=True) for _ in range(len(cfg.taps) - 1)])
        self.main = DBlock(w, cfg.d_ch, clip_feat=False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out = feats[:, 0]
        for i, block in enumerate(self.DBlocks):
            out = block(out, feats[:, i + 1])
        return self.main(out)


class NetC(nn.Module):
    """Image features + tiled sentence embedding -> one logit per image, [B, 1, 1, 1]."""

    def __init__(self, cfg: GalipConfig) -> None:
        super().__init__()
        self.cond_dim, self.grid = cfg.cond_dim, cfg.grid
        # Official: two 4x4 convs on the 7x7 grid. The second kernel follows the grid so the
        # output stays one logit per image for other grid sizes.
        self.joint_conv = nn.Sequential(
            nn.Conv2d(cfg.d_ch + cfg.cond_dim, cfg.c_hidden, 4, 1, 0, bias=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(cfg.c_hidden, 1, cfg.grid - 3, 1, 0, bias=False),
        )

    def forward(self, feats: torch.Tensor, sent_emb: torch.Tensor) -> torch.Tensor:
        cond = sent_emb.view(-1, self.cond_dim, 1, 1).expand(-1, -1, self.grid, self.grid)
        return self.joint_conv(torch.cat([feats, cond], dim=1))


class NetP(nn.Module):
    """A pixel-level conditional discriminator beside D/C (not part of official GALIP).

    D sees the image only through CLIP's patch grid (8x8 for a 64 px small CLIP), coarse enough
    that a soft blob and a square look alike to it; this one reads the pixels. Strided
    spectral-normalised convolutions down to 4x4, then a projection head: ``fc(h) + <W s, h>``,
    so it judges image and caption together (mismatched pairs are fakes, as for C).
    Training-only: never saved with the generator.
    """

    def __init__(self, cfg: GalipConfig, ch: int = 32, n_aux: int = 0) -> None:
        super().__init__()
        sn = nn.utils.spectral_norm
        layers, c_in, size = [], 3, cfg.image_size
        c_out = ch
        while size > 4:
            layers += [sn(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c_in, c_out, size = c_out, min(c_out * 2, ch * 8), size // 2
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        width = c_in * 16
        self.fc = sn(nn.Linear(width, 1))
        self.proj = sn(nn.Linear(cfg.cond_dim, width))
        # Optional auxiliary classifier (AC-GAN style) on the same features: it learns from real
        # pictures what the caption's objects look like, and G is asked to satisfy it.
        self.aux = nn.Linear(width, n_aux) if n_aux else None

    def features(self, image: torch.Tensor) -> torch.Tensor:
        return self.pool(self.convs(image)).flatten(1)

    def judge(self, h: torch.Tensor, sent_emb: torch.Tensor) -> torch.Tensor:
        """The projection critic on :meth:`features` (one feature pass serves several captions)."""
        return self.fc(h).squeeze(1) + (self.proj(sent_emb) * h).sum(dim=1) / math.sqrt(h.shape[1])

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        if self.aux is None:
            raise ValueError("this pixel discriminator has no auxiliary classifier")
        return self.aux(h)

    def forward(self, image: torch.Tensor, sent_emb: torch.Tensor) -> torch.Tensor:
        return self.judge(self.features(image), sent_emb)


@dataclass
class Nets:
    """The three networks and the frozen CLIP they share (plus the optional pixel critic P)."""

    cfg: GalipConfig
    clip: nn.Module
    G: NetG
    D: NetD
    C: NetC
    P: NetP | None = None


def build_nets(cfg: GalipConfig, clip: nn.Module, with_d: bool = True, pixel_d: bool = False,
               n_aux: int = 0) -> Nets:
    """NetG around ``clip``'s vision trunk (shared), plus NetD and NetC unless ``with_d`` is false,
    and the pixel discriminator NetP when ``pixel_d`` (with ``n_aux`` auxiliary class outputs)."""
    G = NetG(cfg, clip.visual)
    D = NetD(cfg) if with_d else None
    C = NetC(cfg) if with_d else None
    P = NetP(cfg, n_aux=n_aux) if with_d and pixel_d else None
    return Nets(cfg, clip, G, D, C, P)


def count_params(module: nn.Module, learnable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not learnable_only)
