"""The pixel judge behind ``studio eval``: does a generated image show what was asked?

A CLIP trained on the same data is a lenient judge (it accepts a soft blob as a square), so
every headline figure of ``studio eval`` comes from the pixels alone:

* **Background**: the median of the one-pixel border (objects rarely touch it); light or dark
  by its grey level.
* **Colour**: every other pixel is explained as a blend ``background + a * (palette colour -
  background)`` of one palette colour (anti-aliased edges and washed-out colours are such
  blends). A pixel counts for the colour whose blend fits best, if it fits well (small
  residual) and is mostly colour (``a >= 0.5``).
* **Objects**: 8-connected components of the pixels of one colour. The object for a requested
  colour is its largest component; components that no request explains are strays.
* **Shape**: each of the four ideal shapes (drawn exactly as the dataset draws them) is fitted
  to the object's bounding box and compared with its mask; the shape with the best
  intersection-over-union wins, if it covers the mask well (IoU >= ``MIN_SHAPE_IOU``) and clearly
  better than the runner-up, so a blob halfway between a circle and a square is no shape at all.
* **Size**: the fitted half-extent against the dataset's small and large sizes.
* **Relation**: the centroids of the two objects; "A left of B" holds when A's centroid is left
  of B's and the horizontal offset dominates the vertical one (and likewise for the others).
* **Blank**: no object of any palette colour worth the name (a prompt that names an object
  deserves one).

The judge is checked against the dataset's own drawings (tests/ml/test_checker.py). Needs numpy
and Pillow only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from studio.ml.shapes import BACKGROUND_LEVEL, COLOURS, PALETTE, SHAPES, SIZE_FRACTION

_PALETTE = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)  # [8,3]
#: Largest distance (RGB units) between a pixel and its best blend to still count.
RESIDUAL_TOLERANCE = 45.0
#: Least share of colour in a pixel's blend to count (below: mostly background).
MIN_ALPHA = 0.5
#: A colour is present when it covers at least this share of the image (0.3 %: 12 px at 64x64,
#: a quarter of the smallest object) and at least MIN_PIXELS pixels.
MIN_AREA = 0.003
MIN_PIXELS = 4
#: A stray blob is a component of at least this share of the image that no request explains.
STRAY_AREA = 0.002
#: Best-fitting ideal shape must reach this IoU with the object's mask to name a shape.
MIN_SHAPE_IOU = 0.72
#: ... and beat the runner-up by this much: a blob halfway between a circle and a square (the
#: soft shape a weak generator draws) fits both about equally and names neither.
MIN_SHAPE_MARGIN = 0.03
#: Half-extent (share of the canvas) between the dataset's small (0.10) and large (0.18) sizes.
SIZE_SPLIT = (SIZE_FRACTION["small"] + SIZE_FRACTION["large"]) / 2
#: Grey level between the dataset's dark (50) and light (210) backgrounds.
BACKGROUND_SPLIT = (BACKGROUND_LEVEL["light"] + BACKGROUND_LEVEL["dark"]) / 2
_SUPERSAMPLE = 4


@dataclass
class ObjectFound:
    """One object the judge found for one requested colour."""

    colour: str
    area: int
    centroid: tuple[float, float]
    shape: str | None  # None: no ideal shape fits well
    shape_iou: dict[str, float]
    half: float  # fitted half-extent, pixels
    size: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class CheckResult:
    """What the judge found for one image and one request."""

    colour_ok: bool  # every requested colour is present
    colours_found: dict[str, int]  # palette colour -> pixel count (only the present ones)
    dominant: str | None  # the colour with most pixels
    relation_ok: bool | None  # None for one-object requests
    shapes_guessed: list[str | None] = field(default_factory=list)  # per requested object
    shape_ok: bool | None = None  # the fitted shape is the requested one, for every object
    size_ok: bool | None = None  # None when the request names no size
    background: str = "light"
    background_ok: bool | None = None  # None when the request names no background
    blank: bool = False
    strays: int = 0  # components no request explains
    objects: list[ObjectFound | None] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["objects"] = [o.as_dict() if o else None for o in self.objects]
        return data


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


def background_tone(background: np.ndarray) -> str:
    return "dark" if float(np.mean(background)) < BACKGROUND_SPLIT else "light"


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


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, largest first, each as a boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    found = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp = np.zeros_like(mask, dtype=bool)
        queue = deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            comp[y, x] = True
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        found.append(comp)
    found.sort(key=lambda c: -int(c.sum()))
    return found


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


# ---- shape fitting ------------------------------------------------------------------------------

#: Each ideal shape's extent around its centre, in half-extents: (left, right, top, bottom), as
#: :func:`studio.ml.shapes._draw_object` draws it.
_EXTENTS = {
    "circle": (1.0, 1.0, 1.0, 1.0),
    "square": (0.85, 0.85, 0.85, 0.85),
    "triangle": (1.0, 1.0, 1.0, 0.8),
    "diamond": (0.8, 0.8, 1.0, 1.0),
}


def _ideal_polygon(shape: str, x: float, y: float, h: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(x, y - h), (x + h, y + 0.8 * h), (x - h, y + 0.8 * h)]
    if shape == "diamond":
        return [(x, y - h), (x + 0.8 * h, y), (x, y + h), (x - 0.8 * h, y)]
    return None


#: Area of each ideal shape in squared half-extents, and its centroid's offset below the centre.
_AREAS = {"circle": np.pi, "square": 1.7 ** 2, "triangle": 1.8, "diamond": 1.6}
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 0.2, "diamond": 0.0}


def _placements(shape: str, mask: np.ndarray) -> list[tuple[float, float, float]]:
    """Candidate ``(x, y, half)`` of the ideal ``shape`` for an object mask.

    From the bounding box (half-extent from its width, its height or its larger side: a drawn
    shape's box is off by up to a pixel on either axis) and from the mask's area and centroid
    (which a stray rim pixel that stretches the box does not move).
    """
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    left, right, top, bottom = _EXTENTS[shape]
    from_w, from_h = (x1 - x0) / (left + right), (y1 - y0) / (top + bottom)
    out = []
    for h in (from_w, from_h, max(from_w, from_h)):
        out.append(((x0 + x1) / 2 + h * (left - right) / 2, (y0 + y1) / 2 + h * (top - bottom) / 2, h))
    h = float(np.sqrt(len(xs) / _AREAS[shape]))
    out.append((float(xs.mean()) + 0.5, float(ys.mean()) + 0.5 - _CENTROID_DY[shape] * h, h))
    return out


def ideal_mask(shape: str, x: float, y: float, h: float, size: tuple[int, int]) -> np.ndarray:
    """The ideal ``shape`` centred at ``(x, y)`` with half-extent ``h`` (pixels), drawn as the
    dataset draws it (4x supersampled, half coverage or more is inside)."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (size[1] * s, size[0] * s), 0)
    draw = ImageDraw.Draw(canvas)
    X, Y, H = x * s, y * s, h * s
    if shape == "circle":
        draw.ellipse((X - H, Y - H, X + H, Y + H), fill=255)
    elif shape == "square":
        q = 0.85 * H
        draw.rectangle((X - q, Y - q, X + q, Y + q), fill=255)
    else:
        draw.polygon(_ideal_polygon(shape, X, Y, H), fill=255)
    small = canvas.resize((size[1], size[0]), Image.Resampling.BOX)
    return np.asarray(small) >= 128


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def fit_shape(mask: np.ndarray) -> tuple[str | None, dict[str, float], float]:
    """(best shape or None, IoU per shape, fitted half-extent in pixels) for an object mask."""
    if mask.sum() < 6:
        return None, {}, 0.0
    ious, halves = {}, {}
    for shape in SHAPES:
        scored = [(_iou(ideal_mask(shape, x, y, h, mask.shape), mask), h) for x, y, h in _placements(shape, mask)]
        ious[shape], halves[shape] = max(scored)
    best = max(ious, key=ious.get)
    runner_up = max(v for k, v in ious.items() if k != best)
    clear = ious[best] >= MIN_SHAPE_IOU and ious[best] - runner_up >= MIN_SHAPE_MARGIN
    return (best if clear else None), ious, halves[best]


def guess_shape(mask: np.ndarray) -> str | None:
    """The ideal shape that fits ``mask`` best, or None when none fits well."""
    return fit_shape(mask)[0]


# ---- judging ------------------------------------------------------------------------------------


def _find_object(labels: np.ndarray, colour: str, need: int) -> tuple[ObjectFound | None, np.ndarray | None]:
    """The largest blob of ``colour`` (with its rim), or ``(None, None)`` when there is none."""
    comps = components(labels == COLOURS.index(colour))
    if not comps or int(comps[0].sum()) < need:
        return None, None
    mask = comps[0] | (_dilate(comps[0]) & (labels >= 0))  # anti-aliased rim pixels that fit another colour
    shape, ious, half = fit_shape(mask)
    size = "small" if half < SIZE_SPLIT * max(mask.shape) else "large"
    return ObjectFound(colour, int(mask.sum()), centroid(mask), shape, ious, half, size), mask


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One-pixel 8-neighbour dilation."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def _strays(labels: np.ndarray, masks: list[np.ndarray], stray_px: int) -> int:
    """Blobs of palette colour (any colour, rims included) that hold none of the found objects."""
    count = 0
    for comp in components(labels >= 0):
        if int(comp.sum()) >= stray_px and not any((comp & m).any() for m in masks):
            count += 1
    return count


def check_image(image, attrs: dict) -> CheckResult:
    """Judge one image against requested attributes.

    ``attrs``: ``{"objects": [{"colour", "shape"?, "size"?}, ...], "relation"?, "background"?}``
    as :meth:`studio.ml.shapes.Scene.attrs` gives; ``attrs["asked"]`` (from
    :func:`studio.ml.shapes.eval_prompts`) says whether the prompt named sizes and a background,
    and only what was asked is judged. Without it, sizes are not judged and the background only
    when ``attrs["background"]`` is set.
    """
    array = to_array(image)
    bg = estimate_background(array)
    labels = classify_pixels(array, bg)
    counts = colour_counts(labels)
    need = min_pixels(array.shape)
    present = {c: n for c, n in counts.items() if n >= need}
    dominant = max(counts, key=counts.get) if any(counts.values()) else None
    objects = attrs["objects"]
    asked = attrs.get("asked", {"sizes": False, "background": attrs.get("background")})
    pairs = [_find_object(labels, o["colour"], need) for o in objects]
    found = [f for f, _ in pairs]
    colour_ok = all(f is not None for f in found)
    guessed = [f.shape if f else None for f in found]
    shape_ok = None
    if all("shape" in o for o in objects):
        shape_ok = all(g == o["shape"] for g, o in zip(guessed, objects))
    size_ok = None
    if asked.get("sizes") and all(o.get("size") for o in objects):
        size_ok = all(f is not None and f.size == o["size"] for f, o in zip(found, objects))
    relation_ok = None
    if len(objects) == 2 and attrs.get("relation"):
        relation_ok = bool(colour_ok and relation_holds(found[0].centroid, found[1].centroid, attrs["relation"]))
    tone = background_tone(bg)
    background_ok = None if not asked.get("background") else tone == asked["background"]
    blank = not present
    stray_px = max(MIN_PIXELS, int(round(STRAY_AREA * array.shape[0] * array.shape[1])))
    strays = _strays(labels, [m for _, m in pairs if m is not None], stray_px)
    return CheckResult(colour_ok, present, dominant, relation_ok, guessed, shape_ok, size_ok, tone,
                       background_ok, blank, strays, found)


#: The figures :func:`score_images` reports, in the order a table shows them.
METRICS = ("colour", "shape", "relation", "size", "background", "blank", "strays")


def score_images(images, attrs_list: list[dict]) -> dict:
    """Shares over a set of images, each with its count ``n`` (requests it applies to).

    ``blank`` is the share of blank canvases and ``strays`` the share of images with a blob no
    request explains: lower is better for those two, higher for the rest. A figure no request
    asks (``n`` 0, e.g. relation among one-object prompts) has the value None.
    """
    return score_results([check_image(im, a) for im, a in zip(images, attrs_list)])


def score_results(results: list[CheckResult]) -> dict:
    """:func:`score_images` of images already judged (one :class:`CheckResult` each)."""

    def metric(values):  # value None where no image was asked this (strict JSON, unlike NaN)
        values = [v for v in values if v is not None]
        return {"value": float(np.mean(values)) if values else None, "n": len(values)}

    return {
        "colour": metric([r.colour_ok for r in results]),
        "shape": metric([r.shape_ok for r in results]),
        "relation": metric([r.relation_ok for r in results]),
        "size": metric([r.size_ok for r in results]),
        "background": metric([r.background_ok for r in results]),
        "blank": metric([r.blank for r in results]),
        "strays": metric([r.strays > 0 for r in results]),
    }
