"""Tensor <-> PIL conversions and sample grids (images in ``[-1, 1]``, as every model here uses)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from studio.api import atomic_path


def to_pil(image: torch.Tensor):
    """``[3, H, W]`` in ``[-1, 1]`` -> RGB PIL image (rounded, clamped)."""
    from PIL import Image

    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), mode="RGB")


def grid(rows: Sequence[torch.Tensor], pad: int = 2):
    """A PIL grid: one row per ``[N, 3, H, W]`` tensor (rows may differ in length), grey padding."""
    from PIL import Image

    h, w = rows[0].shape[-2:]
    cols = max(r.shape[0] for r in rows)
    canvas = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad) + pad), (128, 128, 128))
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            canvas.paste(to_pil(image), (pad + j * (w + pad), pad + i * (h + pad)))
    return canvas


def save_png(image, path: str | Path) -> Path:
    """Write a PIL image atomically (temp file, then rename): readers never see half a file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in ``[-1, 1]``, measured on the ``[0, 1]`` scale."""
    mse = (((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2) ** 2).mean().item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(1.0 / mse)).item()
