"""The ``emoji`` data (:mod:`studio.ml.emoji`) as a map-style torch dataset.

Items are ``{"image": float [3,S,S] in [-1,1], "caption": str, "attrs": dict}`` like every
dataset of :func:`studio.ml.datasets.open_dataset`; ``attrs`` is the image's record (style,
concept, code points, name, source package and version, licence, attribution) plus ``split``.

``split="train"``: item ``i`` is image ``i % N`` with training template ``i // N``, so the
``N * len(TRAIN_TEMPLATES)`` items are every (image, training phrasing) pair once and a random
index draws a random pair. ``split="heldout"``: every (image, held-out caption) pair, for
evaluation; none of these captions is a training caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from studio.ml import emoji


class EmojiDataset(Dataset):
    """Options: ``styles`` (default every style found), ``npm_dir``, ``cache_dir``,
    ``skin_tones`` (default True), ``split`` (``train``/``heldout``), ``workers`` (for the
    first build), ``limit`` (the first ``limit`` concepts of every style only)."""

    def __init__(self, size: int = emoji.DEFAULT_SIZE, split: str = "train", styles: Sequence[str] | None = None,
                 npm_dir: str | Path | None = None, cache_dir: str | Path | None = None, skin_tones: bool = True,
                 workers: int | None = None, limit: int | None = None):
        if split not in ("train", "heldout"):
            raise ValueError(f"emoji split must be 'train' or 'heldout', got {split!r}")
        self.data = emoji.build(size=size, styles=styles, npm_dir=npm_dir, cache_dir=cache_dir,
                                skin_tones=skin_tones, workers=workers, limit=limit)
        self.split = split
        self._images = torch.from_numpy(np.ascontiguousarray(self.data.images))  # uint8 [N,S,S,3], shared
        if split == "heldout":
            self._pairs = [(i, c) for i in range(len(self.data)) for c in self.data.heldout_captions(i)]

    def __len__(self) -> int:
        if self.split == "train":
            return len(self.data) * len(emoji.TRAIN_TEMPLATES)
        return len(self._pairs)

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` of the built data (not an item index) as float ``[3,S,S]`` in [-1,1]."""
        return self._images[index].permute(2, 0, 1).float().div(127.5).sub(1.0).contiguous()

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.split == "train":
            n = len(self.data)
            image, caption = index % n, self.data.train_captions(index % n)[index // n]
        else:
            image, caption = self._pairs[index]
        attrs = self.data.record(image)
        attrs["split"] = self.split
        return {"image": self.image(image), "caption": caption, "attrs": attrs}
