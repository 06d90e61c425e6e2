"""Helpers for the GALIP tests: a tiny CLIP, tiny GALIP nets, official-layout files."""

from __future__ import annotations

from pathlib import Path

import torch

from studio_galip.model import GalipConfig, build_nets

TINY_ARCH = "galip-test-tiny"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 48, "patch_size": 8, "width": 64, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_WIDTHS = dict(ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
#: Key manifests of the official modules (name, shape[, dtype] per line), for strict loading.
MANIFESTS = Path(__file__).resolve().parent / "manifests"


def make_tiny_clip(seed: int = 0):
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(**TINY_CLIP_CFG).eval().requires_grad_(False)


def randomise(nets, seed: int = 1, std: float = 0.05):
    """Random values for every learnable weight (the affine layers start as identity otherwise).

    Affine gammas stay around 1 so signals neither vanish nor explode through the blocks.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in (nets.G, nets.D, nets.C):
            if net is None:
                continue
            for name, p in net.named_parameters():
                if p.requires_grad:
                    offset = 1.0 if name.endswith("fc_gamma.linear2.bias") else 0.0
                    p.copy_(torch.randn(p.shape, generator=gen) * std + offset)
    return nets


def make_tiny_nets(clip=None, seed: int = 1, **overrides):
    clip = clip if clip is not None else make_tiny_clip()
    cfg = GalipConfig.for_clip(clip, **{**TINY_WIDTHS, **overrides})
    return randomise(build_nets(cfg, clip), seed)


def save_official_checkpoint(path: Path, nets, half_trunk: bool = True) -> None:
    """The official layout: DataParallel ``module.`` prefixes, fp16 CLIP trunk tensors."""
    def prefixed(state, half_keys=()):
        return {f"module.{k}": (v.half() if any(k.startswith(h) for h in half_keys) else v.clone())
                for k, v in state.items()}

    trunk = ("mapping.CLIP_ViT.",) if half_trunk else ()
    torch.save(
        {
            "model": {"netG": prefixed(nets.G.state_dict(), trunk), "netD": prefixed(nets.D.state_dict()),
                      "netC": prefixed(nets.C.state_dict())},
            "optimizers": {"optimizer_G": {"state": {}, "param_groups": []}},
            "epoch": 3,
        },
        path,
    )


def save_clip(path: Path, clip) -> Path:
    torch.save(clip.state_dict(), path)
    return path
