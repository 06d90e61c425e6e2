"""The procedural ``shapes`` dataset: coloured shapes on a grey background, with exact captions.

Everything a generated image should show is known, so the data doubles as a test: the
attributes of every sample (objects, colours, sizes, positions, relation, background) are part
of the sample, and :mod:`studio.ml.checker` can verify an image against them.

Determinism: sample ``i`` of split ``s`` with seed ``seed`` depends on ``(split, seed, i)`` only
(one numpy generator per sample), so any sample can be regenerated on its own, in any order, in
any process. The split is part of the random key, so ``train`` and ``eval`` streams never
coincide whatever seeds are used: evaluation on the ``eval`` split is on scenes never seen in
training.

This module needs numpy and Pillow only (no torch), so the checker and the prompt lists can be
used without the ML stack.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

#: Colour names and their exact RGB values (the spec's palette).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (240, 120, 180),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
#: "A <relation> B"; every relation has an inverse so "B <inverse> A" says the same thing.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
BACKGROUNDS: tuple[str, ...] = ("light", "dark")

#: Grey level of each background before jitter; far from every palette colour.
BACKGROUND_LEVEL = {"light": 210, "dark": 50}
BACKGROUND_JITTER = 12  # +- grey level
CHANNEL_JITTER = 3  # +- per channel, so the grey is not perfectly neutral
#: Half-extent of an object as a fraction of the canvas, before a +-10 % jitter.
SIZE_FRACTION = {"small": 0.10, "large": 0.18}
SUPERSAMPLE = 4  # drawn at 4x and box-filtered down: smooth edges, like a generator's output

#: The random stream of each split; part of every sample's key.
SPLITS = {"train": 0, "eval": 1}
DEFAULT_TWO_OBJECT_SHARE = 0.5


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object. ``centre`` and ``half`` are in pixels of the canvas it was made for."""

    shape: str
    colour: str
    size: str
    centre: tuple[float, float]
    half: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        x, y = self.centre
        return (x - self.half, y - self.half, x + self.half, y + self.half)

    def describe(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size}


@dataclass(frozen=True)
class Scene:
    """What a sample shows. With two objects, ``objects[0] <relation> objects[1]`` holds."""

    objects: tuple[ShapeObject, ...]
    relation: str | None
    background: str
    background_rgb: tuple[int, int, int]
    canvas: int

    def attrs(self) -> dict:
        """Plain-data attributes (JSON-friendly), as stored with samples and prompts."""
        return {
            "objects": [
                {**o.describe(), "centre": list(o.centre), "bbox": list(o.bbox)} for o in self.objects
            ],
            "relation": self.relation,
            "background": self.background,
            "background_rgb": list(self.background_rgb),
            "canvas": self.canvas,
        }


@dataclass(frozen=True)
class Caption:
    """A caption and exactly what it claims: used to know which images it is true of.

    ``objects`` are ``(colour, shape, size-or-None)``; ``relation`` reads ``objects[0] relation
    objects[1]``; ``background`` is None when the caption does not mention it.
    """

    text: str
    objects: tuple[tuple[str, str, str | None], ...]
    relation: str | None = None
    background: str | None = None
    rel_form: int = 0  # which phrasing of the relation ("to the left of" or "left of")

    def key(self) -> tuple:
        """Canonical form of the claim: captions with equal keys say the same thing."""
        objs, rel = self.objects, self.relation
        if rel in ("right of", "below"):
            objs, rel = (objs[1], objs[0]), INVERSE[rel]
        return (objs, rel, self.background)


# ---- sampling ---------------------------------------------------------------------------------


def sample_rng(seed: int, index: int, split: str = "train") -> np.random.Generator:
    """The generator of one sample: a function of (split, seed, index) only."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be >= 0")
    return np.random.default_rng([SPLITS[split], seed, index])


def sample_scene(
    seed: int,
    index: int,
    split: str = "train",
    canvas: int = 64,
    two_object_share: float = DEFAULT_TWO_OBJECT_SHARE,
) -> Scene:
    """Scene ``index`` of the stream ``(split, seed)``: same arguments, same scene."""
    rng = sample_rng(seed, index, split)
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    level = BACKGROUND_LEVEL[background] + int(rng.integers(-BACKGROUND_JITTER, BACKGROUND_JITTER + 1))
    bg_rgb = tuple(int(np.clip(level + rng.integers(-CHANNEL_JITTER, CHANNEL_JITTER + 1), 0, 255)) for _ in range(3))
    if rng.random() < two_object_share:
        colours = rng.choice(len(COLOURS), size=2, replace=False)  # distinct, so the checker can tell them apart
        specs = [(SHAPES[rng.integers(len(SHAPES))], COLOURS[c], SIZES[rng.integers(len(SIZES))]) for c in colours]
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        objects = _place_pair(rng, specs, relation, canvas)
    else:
        spec = (SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))], SIZES[rng.integers(len(SIZES))])
        objects, relation = (_place_single(rng, spec, canvas),), None
    return Scene(objects=objects, relation=relation, background=background, background_rgb=bg_rgb, canvas=canvas)


def _half_extent(rng: np.random.Generator, size: str, canvas: int) -> float:
    return float(SIZE_FRACTION[size] * canvas * rng.uniform(0.9, 1.1))


def _place_single(rng, spec, canvas: int) -> ShapeObject:
    shape, colour, size = spec
    half = _half_extent(rng, size, canvas)
    margin = half + 1
    x, y = rng.uniform(margin, canvas - margin, size=2)
    return ShapeObject(shape, colour, size, (float(x), float(y)), half)


#: The least space between two objects' extents along their relation's axis (share of the canvas).
PAIR_GAP = 0.06


def _place_pair(rng, specs, relation: str, canvas: int) -> tuple[ShapeObject, ShapeObject]:
    """Two non-overlapping objects with ``first relation second`` clearly true.

    The offset along the relation's axis is at least the sum of the half-extents plus a gap,
    and at least twice the offset across it, so nobody could read the picture another way.
    """
    halves = [_half_extent(rng, s[2], canvas) for s in specs]
    gap = PAIR_GAP * canvas
    along_min = halves[0] + halves[1] + gap
    for _ in range(200):
        centres = [rng.uniform(h + 1, canvas - h - 1, size=2) for h in halves]
        offset = centres[1] - centres[0]  # from first to second
        # "first left of second": second is to the right, i.e. offset x > 0.
        axis, sign = {"left of": (0, 1), "right of": (0, -1), "above": (1, 1), "below": (1, -1)}[relation]
        along, across = sign * offset[axis], abs(offset[1 - axis])
        if along >= along_min and along >= 2 * across:
            break
    else:  # pragma: no cover - the canvas always leaves room; kept as a deterministic fallback
        mid = canvas / 2
        centres = [np.array([mid, mid]), np.array([mid, mid])]
        d = halves[0] + halves[1] + gap
        axis, sign = {"left of": (0, 1), "right of": (0, -1), "above": (1, 1), "below": (1, -1)}[relation]
        centres[0][axis] -= sign * d / 2
        centres[1][axis] += sign * d / 2
    return tuple(
        ShapeObject(s[0], s[1], s[2], (float(c[0]), float(c[1])), h) for s, c, h in zip(specs, centres, halves)
    )


# ---- rendering --------------------------------------------------------------------------------


def render_scene(scene: Scene, off_class: bool = False) -> Image.Image:
    """The ground-truth RGB image of ``scene`` (``scene.canvas`` pixels square). ``off_class``:
    also draw the outlines no caption names (a :func:`distractor_scene`); otherwise they are refused."""
    big = scene.canvas * SUPERSAMPLE
    image = Image.new("RGB", (big, big), scene.background_rgb)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, SUPERSAMPLE, off_class)
    return image.resize((scene.canvas, scene.canvas), Image.Resampling.BOX)


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, scale: float, off_class: bool = False) -> None:
    x, y = obj.centre[0] * scale, obj.centre[1] * scale
    h = obj.half * scale
    fill = PALETTE[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x - h, y - h, x + h, y + h), fill=fill)
    elif obj.shape == "square":
        s = 0.85 * h  # a square of the same half-extent looks much bigger than the others
        draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x, y - h), (x + h, y + 0.8 * h), (x - h, y + 0.8 * h)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(x, y - h), (x + 0.8 * h, y), (x, y + h), (x - 0.8 * h, y)], fill=fill)
    elif off_class and obj.shape in OFF_CLASS_SHAPES:
        _draw_off_class(draw, obj.shape, x, y, h, fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


#: Outlines no caption names, drawn only as negatives for training a judge of generated images
#: (:func:`distractor_scene`): what a generator draws when it misses a shape looks like these.
OFF_CLASS_SHAPES: tuple[str, ...] = ("ellipse", "rounded square", "hexagon", "kite", "blob")


def _draw_off_class(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, h: float, fill) -> None:
    if shape == "ellipse":
        draw.ellipse((x - h, y - 0.6 * h, x + h, y + 0.6 * h), fill=fill)
    elif shape == "rounded square":
        s = 0.85 * h
        draw.rounded_rectangle((x - s, y - s, x + s, y + s), radius=0.55 * s, fill=fill)
    elif shape == "hexagon":
        draw.polygon([(x + h * np.cos(a), y + h * np.sin(a)) for a in np.arange(6) * np.pi / 3], fill=fill)
    elif shape == "kite":
        draw.polygon([(x, y - h), (x + 0.7 * h, y - 0.3 * h), (x, y + h), (x - 0.7 * h, y - 0.3 * h)], fill=fill)
    else:  # blob: a circle with a wobbling radius, the same every time for the same size
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        radius = h * (0.85 + 0.15 * np.sin(3 * angles + 1.0) + 0.08 * np.cos(5 * angles))
        draw.polygon([(x + r * np.cos(a), y + r * np.sin(a)) for a, r in zip(angles, radius)], fill=fill)


def distractor_scene(scene: Scene, rng: np.random.Generator, off_class_share: float = 0.5,
                     resize_share: float = 0.0) -> Scene:
    """``scene`` with one object changed: redrawn as another outline at the same place, size and
    colour, or (a share ``resize_share``) drawn at the other size.

    Why: a CLIP trained on clean drawings only accepts a soft blob as any shape, so it cannot
    pick the right one among a generator's candidates. Set against these images, a caption must
    prefer the true outline to an outline no caption names (an ellipse, a rounded square, a
    blob...; share ``off_class_share``) or to another of the four shapes. Every caption of
    ``scene`` is false of an outline change.

    ``resize_share``: the share of distractors that keep the outline and draw the object at the
    other size instead (small <-> large, same centre, moved in just enough to stay on the
    canvas), for a CLIP that must also pick the asked size. Only captions that name sizes are
    false of those (:func:`caption_is_true` tells); so give it for such captions only. Where the
    grown object would come closer to the other one than two objects are ever drawn, or cross
    it, the outline changes instead.
    """
    k = int(rng.integers(len(scene.objects)))
    obj = scene.objects[k]
    if resize_share and rng.random() < resize_share:  # no draw at 0: older runs keep their stream
        resized = _resized(scene, k)
        if resized is not None:
            objects = list(scene.objects)
            objects[k] = resized
            return dataclasses.replace(scene, objects=tuple(objects))
    if rng.random() < off_class_share:
        shape = OFF_CLASS_SHAPES[int(rng.integers(len(OFF_CLASS_SHAPES)))]
    else:
        others = [x for x in SHAPES if x != obj.shape]
        shape = others[int(rng.integers(len(others)))]
    objects = list(scene.objects)
    objects[k] = dataclasses.replace(obj, shape=shape)
    return dataclasses.replace(scene, objects=tuple(objects))


def _resized(scene: Scene, k: int) -> ShapeObject | None:
    """Object ``k`` at the other size, kept on the canvas; None where it would no longer stand
    apart from the other object on the same side as before (by the gap :func:`_place_pair` keeps)."""
    obj = scene.objects[k]
    size = "large" if obj.size == "small" else "small"
    half = obj.half * SIZE_FRACTION[size] / SIZE_FRACTION[obj.size]
    centre = np.clip(obj.centre, half + 1, scene.canvas - half - 1)
    for j, other in enumerate(scene.objects):
        if j == k:
            continue
        before, after = np.subtract(obj.centre, other.centre), centre - np.asarray(other.centre)
        axis = int(np.argmax(np.abs(before)))
        if np.sign(after[axis]) != np.sign(before[axis]) or abs(after[axis]) < half + other.half + PAIR_GAP * scene.canvas:
            return None
    return ShapeObject(obj.shape, obj.colour, size, (float(centre[0]), float(centre[1])), half)


def render_attrs(attrs: dict, canvas: int | None = None) -> Image.Image:
    """Render an image from plain attributes (as returned by :meth:`Scene.attrs`).

    Attributes without positions (e.g. a bare prompt) are placed canonically so the result is
    still a valid ground truth for them.
    """
    return render_scene(scene_from_attrs(attrs, canvas))


def scene_from_attrs(attrs: dict, canvas: int | None = None) -> Scene:
    """Rebuild a :class:`Scene` from attributes; positions are made up when missing."""
    size = int(canvas or attrs.get("canvas") or 64)
    scale = size / float(attrs.get("canvas") or size)
    background = attrs.get("background") or "light"
    bg_rgb = tuple(attrs.get("background_rgb") or (BACKGROUND_LEVEL[background],) * 3)
    objs = attrs["objects"]
    relation = attrs.get("relation")
    if all("centre" in o for o in objs):
        objects = tuple(
            ShapeObject(o["shape"], o["colour"], o["size"], (o["centre"][0] * scale, o["centre"][1] * scale),
                        _half_from_bbox(o) * scale)
            for o in objs
        )
    else:
        rng = np.random.default_rng(0)
        specs = [(o["shape"], o["colour"], o.get("size") or "large") for o in objs]
        if len(specs) == 2:
            objects = _place_pair(rng, specs, relation or "left of", size)
        else:
            half = SIZE_FRACTION[specs[0][2]] * size
            objects = (ShapeObject(*specs[0], (size / 2, size / 2), half),)
    return Scene(objects=objects, relation=relation, background=background, background_rgb=bg_rgb, canvas=size)


def _half_from_bbox(obj: dict) -> float:
    x0, _, x1, _ = obj["bbox"]
    return (x1 - x0) / 2


# ---- captions ---------------------------------------------------------------------------------

#: How a relation may be written; the first form is the canonical one.
RELATION_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below",),
}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(colour: str, shape: str, size: str | None = None) -> str:
    """``a red circle``, ``a large orange square``, ``an orange square``."""
    words = [w for w in (size, colour, shape) if w]
    return f"{article(words[0])} {' '.join(words)}"


def _obj_claim(obj: ShapeObject, with_size: bool) -> tuple[str, str, str | None]:
    return (obj.colour, obj.shape, obj.size if with_size else None)


def _phrase(objects, relation, background, rel_form: int = 0) -> str:
    parts = [noun_phrase(o[0], o[1], o[2]) for o in objects]
    text = parts[0] if relation is None else f"{parts[0]} {RELATION_PHRASES[relation][rel_form]} {parts[1]}"
    return text if background is None else f"{text} on a {background} background"


def make_caption(objects, relation=None, background=None, rel_form: int = 0) -> Caption:
    """A :class:`Caption` from claims ``[(colour, shape, size-or-None), ...]``."""
    objects = tuple(tuple(o) for o in objects)
    rel_form = min(rel_form, len(RELATION_PHRASES[relation]) - 1) if relation else 0
    return Caption(_phrase(objects, relation, background, rel_form), objects, relation, background, rel_form)


#: Each phrasing of a relation -> the relation ("to the left of" -> "left of").
_PHRASE_RELATION = {phrase: rel for rel, forms in RELATION_PHRASES.items() for phrase in forms}
_NOUN_PHRASE = rf"an? (?:({'|'.join(SIZES)}) )?({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
_CAPTION = re.compile(
    rf"{_NOUN_PHRASE}(?: ({'|'.join(sorted(map(re.escape, _PHRASE_RELATION), key=len, reverse=True))}) "
    rf"{_NOUN_PHRASE})?(?: on an? ({'|'.join(BACKGROUNDS)}) background)?"
)


def parse_caption(text: str) -> Caption | None:
    """The :class:`Caption` a text says in the grammar's words, or None if it says anything else.

    The inverse of :func:`make_caption` (case, surrounding spaces and a final full stop aside):
    ``parse_caption(make_caption(...).text)`` gives the caption back. A model that only knows
    the grammar uses it to tell which prompts it can judge.
    """
    match = _CAPTION.fullmatch(" ".join(text.lower().strip().rstrip(".").split()))
    if match is None:
        return None
    size1, colour1, shape1, phrase, size2, colour2, shape2, background = match.groups()
    objects = [(colour1, shape1, size1)]
    if phrase is not None:
        if (size1 is None) != (size2 is None):
            return None  # the grammar states sizes for both objects or for neither
        objects.append((colour2, shape2, size2))
    relation = _PHRASE_RELATION.get(phrase) if phrase else None
    form = RELATION_PHRASES[relation].index(phrase) if relation else 0
    caption = make_caption(objects, relation, background, form)
    return caption if caption.text == match.string else None


def captions(scene: Scene) -> list[Caption]:
    """Every phrasing the grammar has for ``scene``: all true of it, in a fixed order.

    With two objects this includes the swapped form ("B right of A"), which says the same.
    The first caption is the canonical one (no size, no background).
    """
    out: list[Caption] = []
    bgs = (None, scene.background)
    if scene.relation is None:
        (obj,) = scene.objects
        for bg in bgs:
            for with_size in (False, True):
                out.append(make_caption([_obj_claim(obj, with_size)], None, bg))
        return out
    a, b = scene.objects
    orders = ((a, b, scene.relation), (b, a, INVERSE[scene.relation]))
    for first, second, rel in orders:
        for with_size in (False, True):
            for form in range(len(RELATION_PHRASES[rel])):
                for bg in bgs:
                    out.append(make_caption([_obj_claim(first, with_size), _obj_claim(second, with_size)], rel, bg, form))
    return out


def canonical_caption(scene: Scene) -> Caption:
    """The plain caption of a scene: "a red circle", "a red circle to the left of a blue square"."""
    return captions(scene)[0]


def random_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    options = captions(scene)
    return options[int(rng.integers(len(options)))]


def caption_is_true(caption: Caption, scene: Scene) -> bool:
    """Whether everything ``caption`` claims holds in ``scene``."""
    if caption.background is not None and caption.background != scene.background:
        return False
    if len(caption.objects) != len(scene.objects):
        return False
    if caption.relation is None:
        return _claim_fits(caption.objects[0], scene.objects[0])
    rel = scene.relation
    a, b = scene.objects
    for first, second, r in ((a, b, rel), (b, a, INVERSE[rel])):
        if r == caption.relation and _claim_fits(caption.objects[0], first) and _claim_fits(caption.objects[1], second):
            return True
    return False


def _claim_fits(claim, obj: ShapeObject) -> bool:
    colour, shape, size = claim
    return colour == obj.colour and shape == obj.shape and (size is None or size == obj.size)


#: What a pixel classifier can be taught from a caption alone: which (colour, shape) and
#: (colour, size) pairs the picture holds. Used as auxiliary targets when training generators.
CLAIM_CLASSES: tuple[str, ...] = tuple(
    [f"{c} {s}" for c in COLOURS for s in SHAPES] + [f"{c} {z}" for c in COLOURS for z in SIZES]
)
#: Each claim class -> its position in :data:`CLAIM_CLASSES`.
CLAIM_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLAIM_CLASSES)}


def claim_targets(objects: Sequence[Sequence[str | None]]) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot targets over :data:`CLAIM_CLASSES` for a caption's ``(colour, shape, size)``
    claims, and a mask of the entries the caption decides.

    Every object names its colour and shape, so the (colour, shape) entries are always decided;
    the (colour, size) entries only when every object's size is stated (a caption without sizes
    says nothing about them).
    """
    targets = np.zeros(len(CLAIM_CLASSES), dtype=np.float32)
    mask = np.zeros(len(CLAIM_CLASSES), dtype=np.float32)
    mask[: len(COLOURS) * len(SHAPES)] = 1.0
    sized = bool(objects) and all(len(o) > 2 and o[2] is not None for o in objects)
    if sized:
        mask[len(COLOURS) * len(SHAPES):] = 1.0
    for obj in objects:
        colour, shape = obj[0], obj[1]
        key = f"{colour} {shape}"
        if key not in CLAIM_INDEX:
            raise ValueError(f"not a claim of the shapes grammar: {colour!r} {shape!r}")
        targets[CLAIM_INDEX[key]] = 1.0
        if sized:
            if obj[2] not in SIZES:
                raise ValueError(f"not a claim of the shapes grammar: size {obj[2]!r}")
            targets[CLAIM_INDEX[f"{colour} {obj[2]}"]] = 1.0
    return targets, mask


# ---- hard negatives ---------------------------------------------------------------------------


def hard_negatives(caption: Caption, rng: np.random.Generator, count: int = 4) -> list[Caption]:
    """Captions that differ from ``caption`` in one detail, so they are false of its image.

    Why: with a plain contrastive loss a text encoder that ignores word order loses almost
    nothing, because two captions in a batch rarely differ only by order. These negatives make
    order the only difference. Two-object captions get, in this order: the relation flipped
    ("A right of B"), the objects swapped ("B left of A"), the colours (or, for equal shapes,
    one colour) swapped, the shapes swapped or a relation on the other axis, and one colour
    replaced. One-object captions get a different colour, a different shape, both, and a
    different size (or colour). Negatives keep the phrasing style of ``caption``.
    """
    objs, rel, bg, form = caption.objects, caption.relation, caption.background, caption.rel_form

    def mk(objects, relation=None) -> Caption:
        return make_caption(objects, relation, bg, form)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    if rel is not None:
        (ca, sa, za), (cb, sb, zb) = objs
        other_axis = ("above", "below") if rel in ("left of", "right of") else ("left of", "right of")
        others = [x for x in COLOURS if x not in (ca, cb)]
        out = [mk(objs, INVERSE[rel]), mk([objs[1], objs[0]], rel)]
        if sa != sb:
            out.append(mk([(cb, sa, za), (ca, sb, zb)], rel))
            out.append(mk([(ca, sb, za), (cb, sa, zb)], rel))
        else:  # swapping colours of equal shapes is the object swap again
            out.append(mk([(ca, sa, za), (pick(others), sb, zb)], rel))
            out.append(mk(objs, pick(other_axis)))
        out.append(mk([(pick(others), sa, za), (cb, sb, zb)], rel))
    else:
        ((c, s, z),) = objs
        other_c = [x for x in COLOURS if x != c]
        other_s = [x for x in SHAPES if x != s]
        out = [mk([(pick(other_c), s, z)]), mk([(c, pick(other_s), z)]), mk([(pick(other_c), pick(other_s), z)])]
        out.append(mk([(c, s, "small" if z == "large" else "large")]) if z else mk([(pick(other_c), s, z)]))
        out.append(mk([(c, pick(other_s), z)]))
    return out[:count]


# ---- datasets and prompts ---------------------------------------------------------------------


@dataclass
class ShapesSample:
    """One sample: the image (PIL, RGB), a caption chosen deterministically, and the scene."""

    image: Image.Image
    caption: Caption
    scene: Scene


@dataclass
class ShapesSource:
    """An indexable stream of samples. ``length`` is nominal: any index < length is valid."""

    seed: int = 0
    split: str = "train"
    canvas: int = 64
    length: int = 1_000_000
    two_object_share: float = DEFAULT_TWO_OBJECT_SHARE
    canonical_captions: bool = False  # True: always the plain caption (eval); False: a random phrasing

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        return sample_scene(self.seed, index, self.split, self.canvas, self.two_object_share)

    def sample(self, index: int) -> ShapesSample:
        if not 0 <= index < self.length:
            raise IndexError(index)
        scene = self.scene(index)
        if self.canonical_captions:
            caption = canonical_caption(scene)
        else:
            # A second stream for the phrasing, so the scene does not depend on it.
            caption = random_caption(scene, np.random.default_rng([SPLITS[self.split], self.seed, index, 1]))
        return ShapesSample(render_scene(scene), caption, scene)


#: Seeds of the evaluation split used by ``studio eval`` and the zero-shot tests.
EVAL_SEED = 0


@dataclass(frozen=True)
class EvalPrompt:
    text: str
    attrs: dict


def eval_prompts(n: int = 512, seed: int = EVAL_SEED, two_object_share: float = 0.5, canvas: int = 64,
                 phrasing: str = "canonical") -> list[EvalPrompt]:
    """``n`` prompts from the held-out split with the attributes a generated image must show.

    The attributes carry the held-out scene (so the ground truth can be rendered) and, under
    ``asked``, what the prompt names beyond colours and shapes: ``sizes`` (bool) and
    ``background`` (``light``/``dark`` or None). ``phrasing="canonical"`` gives the plain
    caption of each scene (no size, no background); ``"grammar"`` a phrasing drawn from the
    whole grammar (sizes, backgrounds, both relation forms), from a stream of its own.
    """
    if phrasing not in ("canonical", "grammar"):
        raise ValueError(f"phrasing must be 'canonical' or 'grammar', got {phrasing!r}")
    source = ShapesSource(seed=seed, split="eval", canvas=canvas, two_object_share=two_object_share)
    out = []
    for i in range(n):
        scene = source.scene(i)
        if phrasing == "canonical":
            caption = canonical_caption(scene)
        else:
            caption = random_caption(scene, np.random.default_rng([SPLITS["eval"], seed, i, 2]))
        attrs = scene.attrs()
        if caption.objects[0][:2] != (scene.objects[0].colour, scene.objects[0].shape):
            attrs["objects"], attrs["relation"] = attrs["objects"][::-1], caption.relation  # the swapped form
        attrs["asked"] = {"sizes": caption.objects[0][2] is not None, "background": caption.background}
        out.append(EvalPrompt(caption.text, attrs))
    return out


def unique_texts(captions_: Iterable[Caption]) -> list[str]:
    seen: dict[str, None] = {}
    for c in captions_:
        seen.setdefault(c.text, None)
    return list(seen)


def vocabulary() -> list[str]:
    """Every word the grammar can produce (for a trimmed token table)."""
    words = {"a", "an", "on", "background", "to", "the", "of"}
    words |= set(COLOURS) | set(SHAPES) | set(SIZES) | set(BACKGROUNDS)
    for phrases in RELATION_PHRASES.values():
        for p in phrases:
            words |= set(p.split())
    return sorted(words)


def with_canvas(scene: Scene, canvas: int) -> Scene:
    """The same scene scaled to another canvas size."""
    k = canvas / scene.canvas
    objects = tuple(dataclasses.replace(o, centre=(o.centre[0] * k, o.centre[1] * k), half=o.half * k) for o in scene.objects)
    return dataclasses.replace(scene, objects=objects, canvas=canvas)


__all__: Sequence[str] = (
    "PALETTE", "COLOURS", "SHAPES", "SIZES", "RELATIONS", "INVERSE", "BACKGROUNDS", "ShapeObject", "Scene", "Caption",
    "sample_scene", "render_scene", "render_attrs", "scene_from_attrs", "captions", "canonical_caption",
    "random_caption", "caption_is_true", "hard_negatives", "ShapesSource", "ShapesSample", "EvalPrompt",
    "eval_prompts", "make_caption", "noun_phrase", "vocabulary", "with_canvas", "EVAL_SEED",
)
