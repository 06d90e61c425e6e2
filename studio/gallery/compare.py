"""Why two PNGs of the same recipe have different sha256: their pixels, their recipes, or both.

A file's sha256 covers the pixels and the recipe written into it. When a re-run's hash differs,
the user needs to know which of the two moved: a recorded diagnostic (a candidate's CLIP score
in its sixth decimal) can differ between CPUs while every pixel is the same, and floating-point
kernels for another instruction set move a few pixels by one level. Both are named, with sizes,
instead of a bare "differs".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

from studio import store

#: Recipe keys that record what happened during a run (scores, timings), not what was asked:
#: a difference there alone, with equal pixels, is still the same image.
DIAGNOSTIC_KEYS = ("extra",)
#: Differences at most this large (in 0..255 levels) are floating-point arithmetic, not a recipe change.
ARITHMETIC_LEVELS = 2


@dataclass(frozen=True)
class Comparison:
    pixels_differing: int  # pixels with any channel different (0: the same picture)
    pixels: int  # pixels compared
    max_level: int  # the largest difference of one channel, 0..255
    size_differs: bool = False
    recipe_changes: tuple[str, ...] = ()  # "path: old -> new", the first few
    changed_keys: frozenset[str] = frozenset()  # every top-level recipe key that differs

    @property
    def same_pixels(self) -> bool:
        return not self.size_differs and self.pixels_differing == 0

    @property
    def same_image(self) -> bool:
        """Equal pixels, and the recipes differ in recorded diagnostics at most."""
        return self.same_pixels and self.changed_keys <= set(DIAGNOSTIC_KEYS)

    def describe(self) -> str:
        """One line for a person: what differs and by how much."""
        other = sorted(self.changed_keys - set(DIAGNOSTIC_KEYS))
        also = f"; the recipes differ in: {', '.join(other)}" if other else ""
        if self.size_differs:
            return "the images have different sizes" + also
        if self.pixels_differing:
            text = (f"{self.pixels_differing} of {self.pixels} pixels differ, by at most "
                    f"{self.max_level} level{'s' if self.max_level != 1 else ''}")
            if self.max_level <= ARITHMETIC_LEVELS and not other:
                text += (" (likely floating-point arithmetic that differs between machines, e.g. CPU "
                         "kernels for another instruction set, not a change of recipe)")
            return text + also
        if not self.recipe_changes:
            return "same pixels and recipe; only the PNG encoding differs"
        what = "only recorded diagnostics (extra) differ" if not other else "the recipes differ"
        return f"same pixels; {what}: {'; '.join(self.recipe_changes)}"

    def as_dict(self) -> dict[str, Any]:
        return {"same_pixels": self.same_pixels, "same_image": self.same_image, "size_differs": self.size_differs,
                "pixels_differing": self.pixels_differing, "pixels": self.pixels, "max_level": self.max_level,
                "changed_keys": sorted(self.changed_keys), "recipe_changes": list(self.recipe_changes),
                "description": self.describe()}


def _changes(old: Any, new: Any, path: str, out: list[str], limit: int) -> None:
    if len(out) >= limit:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        # at the top, what makes an image before what was recorded about it: the cause comes first
        late = DIAGNOSTIC_KEYS if not path else ()
        for key in sorted(set(old) | set(new), key=lambda k: (k in late, str(k))):
            _changes(old.get(key), new.get(key), f"{path}.{key}" if path else str(key), out, limit)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            _changes(a, b, f"{path}[{i}]", out, limit)
    elif old != new:
        out.append(f"{path}: {old!r} -> {new!r}")


def recipe_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 5) -> tuple[str, ...]:
    """The first ``limit`` leaves that differ between two recipes, as ``path: old -> new``;
    fields that make the image are listed before recorded diagnostics."""
    out: list[str] = []
    _changes(old, new, "", out, limit)
    return tuple(out)


def compare_files(original: Path, new: Path) -> Comparison:
    """Pixels and recipes of two stored PNGs; raises ``StoreError`` if either has no readable recipe."""
    old, new_recipe = store.read_recipe(original), store.read_recipe(new)
    with Image.open(original) as a, Image.open(new) as b:
        # RGBA keeps transparency (an imported PNG may have it; a palette's transparent entry too)
        a, b = a.convert("RGBA"), b.convert("RGBA")
    changes = recipe_changes(old, new_recipe)
    keys = frozenset(k for k in set(old) | set(new_recipe) if old.get(k) != new_recipe.get(k))
    if a.size != b.size:
        return Comparison(0, 0, 0, size_differs=True, recipe_changes=changes, changed_keys=keys)
    diff = ImageChops.difference(a, b)
    max_level = max(high for _low, high in diff.getextrema())
    # a pixel differs when any channel does: the channels' maximum is non-zero there
    channels = diff.split()
    any_channel = channels[0]
    for channel in channels[1:]:
        any_channel = ImageChops.lighter(any_channel, channel)
    differing = a.width * a.height - any_channel.histogram()[0]
    return Comparison(differing, a.width * a.height, max_level, recipe_changes=changes, changed_keys=keys)
