"""The one dataset interface every trainer uses: :func:`open_dataset`.

``open_dataset("shapes")`` or ``open_dataset("folder:/path")`` returns a map-style torch
``Dataset`` whose items are ``{"image": float [3,H,W] in [-1,1], "caption": str, "attrs":
dict | None}``. ``attrs`` is the scene (see :meth:`studio.ml.shapes.Scene.attrs`) plus the
claim of the caption under ``"claim"`` for ``shapes``; ``None`` for folders, whose content is
unknown. Use :func:`collate` with a ``DataLoader``: attrs are ragged, the default collate
cannot stack them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from studio.ml import shapes
from studio.ml.folder import FolderDatasetError, FolderSource, open_folder, report_skip


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> float tensor [3,size,size] in [-1,1]: centre square crop, then resize."""

    size: int = 64

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        if w != h:
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            image = image.crop((left, top, left + s, top + s))
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC, reducing_gap=None)
        array = np.asarray(image, dtype=np.float32)
        return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Inverse of :class:`ImageTransform` for a batch ``[B,3,H,W]`` -> ``uint8 [B,H,W,3]``."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def caption_claim(caption: shapes.Caption) -> dict:
    return {
        "objects": [list(o) for o in caption.objects],
        "relation": caption.relation,
        "background": caption.background,
        "rel_form": caption.rel_form,
    }


def claim_caption(claim: dict) -> shapes.Caption:
    """Rebuild the :class:`~studio.ml.shapes.Caption` stored by :func:`caption_claim`."""
    return shapes.make_caption([tuple(o) for o in claim["objects"]], claim["relation"], claim["background"],
                               claim.get("rel_form", 0))


class ShapesDataset(Dataset):
    """The procedural ``shapes`` data as a map-style dataset (rendered at ``size`` pixels)."""

    def __init__(self, size: int = 64, seed: int = 0, split: str = "train", length: int = 1_000_000,
                 two_object_share: float = shapes.DEFAULT_TWO_OBJECT_SHARE, canonical_captions: bool = False):
        self.source = shapes.ShapesSource(seed=seed, split=split, canvas=size, length=length,
                                          two_object_share=two_object_share, canonical_captions=canonical_captions)
        self.transform = ImageTransform(size)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        sample = self.source.sample(int(index))
        attrs = sample.scene.attrs()
        attrs["claim"] = caption_claim(sample.caption)
        return {"image": self.transform(sample.image), "caption": sample.caption.text, "attrs": attrs}


class FolderDataset(Dataset):
    """A user's folder of captioned images; a pair that breaks after the scan is replaced."""

    def __init__(self, path: str | Path, size: int = 64):
        self.source: FolderSource = open_folder(path)
        self.transform = ImageTransform(size)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        n = len(self.source)
        for attempt in range(n):
            i = (int(index) + attempt) % n
            try:
                image, caption = self.source.load(i)
            except OSError as exc:
                report_skip(self.source.pairs[i].image, f"unreadable image ({type(exc).__name__})", self.source.skipped)
                continue
            return {"image": self.transform(image), "caption": caption, "attrs": None}
        raise FolderDatasetError(f"dataset folder {self.source.root} has no readable images left")


def open_dataset(name: str, size: int = 64, **options) -> Dataset:
    """A dataset by name, taken from the plugin registry: ``shapes``, ``emoji``, ``folder:PATH``,
    or any dataset a plugin registered (``register_datasets``), so every trainer can use every dataset.

    ``NAME:ARG`` hands ``ARG`` to the dataset's factory as its first argument (``folder:PATH``).
    ``size`` is the square image size of every item. ``shapes`` options: ``seed``, ``split``
    (``train``/``eval``), ``length``, ``two_object_share``, ``canonical_captions``. ``emoji``
    options: see :class:`studio.ml.emoji_dataset.EmojiDataset`.
    """
    from studio.config import load_settings
    from studio.plugins import get_registry

    spec = get_registry(load_settings().load_plugins).dataset(name)
    _key, sep, arg = name.partition(":")
    return spec.factory(arg, size=size, **options) if sep else spec.factory(size=size, **options)


def builtin_dataset(name: str, size: int = 64, **options) -> Dataset:
    """Studio's own datasets, ``shapes``, ``emoji`` and ``folder:PATH`` (registered by the builtin plugin)."""
    if name == "shapes":
        return ShapesDataset(size=size, **options)
    if name == "emoji":
        from studio.ml.emoji_dataset import EmojiDataset

        return EmojiDataset(size=size, **options)
    if name.startswith("folder:"):
        if options:
            raise TypeError(f"folder datasets take no options besides size (got {', '.join(options)})")
        return FolderDataset(name[len("folder:"):], size=size)
    raise ValueError(f"unknown dataset {name!r} (expected 'shapes', 'emoji' or 'folder:PATH')")


def collate(items: list[dict]) -> dict:
    """Batch items: ``image`` stacked ``[B,3,H,W]``, ``caption`` and ``attrs`` as lists."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "caption": [it["caption"] for it in items],
        "attrs": [it["attrs"] for it in items],
    }
