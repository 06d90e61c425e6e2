"""The pixel-level checker behind ``studio eval``: does a generated image show what was asked?

Colour: the background is estimated from the image border; every other pixel is explained as
a blend ``background + a * (palette colour - background)`` of one palette colour (anti-aliased
edges and washed-out generator colours are such blends). A pixel counts for the colour whose
blend fits best, if it fits well (small residual) and is mostly colour (``a >= 0.5``); others
are left unclassified. A colour is present when it covers enough pixels.

Relation: the centroids of the two requested colours; "A left of B" holds when A's centroid is
left of B's and the horizontal offset dominates the vertical one (and likewise for the others).

Shape: CLIP judges shape elsewhere; :func:`guess_shape` is a cheap geometric estimate (fill
ratio of the bounding box, then top/bottom width for triangle vs diamond), also reported.

Needs numpy and Pillow only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from studio.ml.shapes import COLOURS, PALETTE

_PALETTE = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)  # [8,3]
#: Largest distance (RGB units) between a pixel and its best blend to still count.
RESIDUAL_TOLERANCE = 45.0
#: Least share of colour in a pixel's blend to count (below: mostly background).
MIN_ALPHA = 0.5
#: A colour is present when it covers at least this share of the image (0.3 %: 12 px at 64x64,
#: a quarter of the smallest object) and at least MIN_PIXELS pixels.
MIN_AREA = 0.003
MIN_PIXELS = 4


@dataclass
class CheckResult:
    """What the checker found for one image and one request."""

    colour_ok: bool  # every requested colour is present
    colours_found: dict[str, int]  # palette colour -> pixel count (only the present ones)
    dominant: str | None  # the colour with most pixels
    relation_ok: bool | None  # None for one-object requests
    shapes_guessed: list[str | None] = field(default_factory=list)  # per requested object
    shape_ok: bool | None = None  # geometric guess agrees for every object (a heuristic)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def to_array(image) -> np.ndarray:
    """uint8 ``HxWx3`` from a PIL image or an array (RGBA and grey are converted)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array


def estimate_background(array: np.ndarray) -> np.ndarray:
    """Median of the one-pixel border: objects rarely touch it, and a median ignores them."""
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def classify_pixels(image, background: np.ndarray | None = None) -> np.ndarray:
    """``HxW`` int labels: index into :data:`~studio.ml.shapes.COLOURS`, or -1 (background/other)."""
    array = to_array(image).astype(np.float32)
    bg = estimate_background(array) if background is None else np.asarray(background, np.float32)
    d = array.reshape(-1, 3) - bg  # [P,3]
    v = _PALETTE - bg  # [8,3]
    vv = np.maximum((v * v).sum(axis=1), 1.0)  # [8]
    alpha = (d @ v.T) / vv  # [P,8]
    residual = np.linalg.norm(d[:, None, :] - alpha[..., None] * v[None], axis=2)  # [P,8]
    ok = (alpha >= MIN_ALPHA) & (alpha <= 1.4) & (residual <= RESIDUAL_TOLERANCE)
    residual = np.where(ok, residual, np.inf)
    labels = residual.argmin(axis=1)
    labels[~ok.any(axis=1)] = -1
    return labels.reshape(array.shape[:2])


def colour_counts(labels: np.ndarray) -> dict[str, int]:
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(COLOURS))
    return {c: int(n) for c, n in zip(COLOURS, counts)}


def min_pixels(shape: tuple[int, ...]) -> int:
    return max(MIN_PIXELS, int(round(MIN_AREA * shape[0] * shape[1])))


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def relation_holds(a: tuple[float, float], b: tuple[float, float], relation: str) -> bool:
    """Whether point ``a`` is ``relation`` point ``b`` (image y grows downwards)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if relation == "left of":
        return dx > 0 and abs(dx) > abs(dy)
    if relation == "right of":
        return dx < 0 and abs(dx) > abs(dy)
    if relation == "above":
        return dy > 0 and abs(dy) > abs(dx)
    if relation == "below":
        return dy < 0 and abs(dy) > abs(dx)
    raise ValueError(f"unknown relation {relation!r}")


def guess_shape(mask: np.ndarray) -> str | None:
    """A geometric guess from a binary mask: square, circle, triangle or diamond.

    Fill ratio of the bounding box separates square (~0.95), circle (~0.78) and the pointed
    shapes (~0.5); a triangle (point up) is much narrower in its top quarter than in its bottom
    quarter, a diamond is symmetric.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) < 6:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    h, w = y1 - y0 + 1, x1 - x0 + 1
    fill = len(xs) / float(h * w)
    if fill >= 0.88:
        return "square"
    if fill >= 0.66:
        return "circle"
    box = mask[y0:y1 + 1, x0:x1 + 1]
    top = box[: max(1, h // 4)].sum(axis=1).mean()
    bottom = box[h - max(1, h // 4):].sum(axis=1).mean()
    return "triangle" if bottom > 1.6 * max(top, 0.5) else "diamond"


def check_image(image, attrs: dict) -> CheckResult:
    """Check one image against requested attributes (``{"objects": [...], "relation": ...}``).

    Each object needs at least ``colour``; ``shape`` is used for the geometric guess only.
    """
    array = to_array(image)
    labels = classify_pixels(array)
    counts = colour_counts(labels)
    need = min_pixels(array.shape)
    present = {c: n for c, n in counts.items() if n >= need}
    dominant = max(counts, key=counts.get) if any(counts.values()) else None
    objects = attrs["objects"]
    colour_ok = all(o["colour"] in present for o in objects)
    guessed = [guess_shape(labels == COLOURS.index(o["colour"])) if o["colour"] in present else None for o in objects]
    shape_ok = None
    if all("shape" in o for o in objects):
        shape_ok = all(g == o["shape"] for g, o in zip(guessed, objects))
    relation_ok = None
    if len(objects) == 2 and attrs.get("relation"):
        a, b = (centroid(labels == COLOURS.index(o["colour"])) for o in objects)
        relation_ok = bool(colour_ok and a and b and relation_holds(a, b, attrs["relation"]))
    return CheckResult(colour_ok, present, dominant, relation_ok, guessed, shape_ok)


def score_images(images, attrs_list: list[dict]) -> dict:
    """Accuracies over a set of images: colour (all objects), relation (two-object requests
    only) and the geometric shape guess; each with its count ``n``."""
    results = [check_image(im, a) for im, a in zip(images, attrs_list)]
    rel = [r.relation_ok for r in results if r.relation_ok is not None]
    shp = [r.shape_ok for r in results if r.shape_ok is not None]

    def metric(values):
        return {"value": float(np.mean(values)) if values else float("nan"), "n": len(values)}

    return {"colour": metric([r.colour_ok for r in results]), "relation": metric(rel), "shape_geometric": metric(shp)}
