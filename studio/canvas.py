"""Is there anything on the canvas? A check every generator's output can take, without torch.

A prompt that names a thing deserves a picture of something; a generator that draws nothing
(an empty canvas, or a faint smudge on it, which is what a small model does with words it never
saw) should say so instead of reporting plain success. "Near-blank" here means: fewer than
``MIN_SHARE`` of the pixels differ clearly (more than ``MIN_CONTRAST`` levels in some channel)
from the background, taken as the median colour of the image border. Pillow only.
"""

from __future__ import annotations

from PIL import Image, ImageChops

#: Least difference from the background, in 0..255 levels of any channel, that counts as ink.
MIN_CONTRAST = 40
#: Least share of inked pixels for a canvas to hold something (0.5 %: 20 px at 64x64).
MIN_SHARE = 0.005


def _border_median(image: Image.Image) -> tuple[int, ...]:
    w, h = image.size
    px = image.load()
    border = [px[x, 0] for x in range(w)] + [px[x, h - 1] for x in range(w)]
    border += [px[0, y] for y in range(h)] + [px[w - 1, y] for y in range(h)]
    return tuple(sorted(p[c] for p in border)[len(border) // 2] for c in range(3))


def inked_share(image: Image.Image) -> float:
    """Share of pixels that differ clearly from the border's median colour."""
    rgb = image.convert("RGB")
    diff = ImageChops.difference(rgb, Image.new("RGB", rgb.size, _border_median(rgb)))
    r, g, b = diff.split()
    strongest = ImageChops.lighter(ImageChops.lighter(r, g), b)
    inked = strongest.point(lambda v: 255 if v > MIN_CONTRAST else 0).histogram()[255]
    return inked / float(rgb.size[0] * rgb.size[1])


def is_near_blank(image: Image.Image) -> bool:
    """True when the canvas holds (almost) nothing but its background."""
    return inked_share(image) < MIN_SHARE
