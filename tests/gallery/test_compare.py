"""Telling why two stored PNGs of one recipe differ: pixels (how many, how far) or recipe fields."""

from __future__ import annotations

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio import store
from studio.gallery.compare import compare_files, recipe_changes

RECIPE = {"prompt": "a red circle", "seed": 1, "params": {"size": 8}, "extra": {"scores": [0.5, 0.25]}}


def _stored(tmp_path, image, recipe):
    return store.resolve_inside(tmp_path, store.save_image(tmp_path, image, recipe).path)


def test_identical_files_compare_equal(tmp_path):
    a = _stored(tmp_path, Image.new("RGB", (8, 8), (10, 20, 30)), RECIPE)
    c = compare_files(a, a)
    assert c.same_pixels and c.same_image and c.recipe_changes == () and c.pixels == 64


def test_a_diagnostic_alone_differing_is_the_same_image(tmp_path):
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    a = _stored(tmp_path, img, RECIPE)
    b = _stored(tmp_path, img, {**RECIPE, "extra": {"scores": [0.5, 0.250001]}})
    c = compare_files(a, b)
    assert c.same_image and c.recipe_changes == ("extra.scores[1]: 0.25 -> 0.250001",)
    assert c.describe() == "same pixels; only recorded diagnostics (extra) differ: extra.scores[1]: 0.25 -> 0.250001"


def test_a_recipe_field_beyond_the_listed_few_still_counts(tmp_path):
    img = Image.new("RGB", (4, 4))
    many = {**RECIPE, "extra": {f"k{i}": i for i in range(10)}}
    a = _stored(tmp_path, img, many)
    b = _stored(tmp_path, img, {**many, "extra": {f"k{i}": -i for i in range(10)}, "seed": 2})
    c = compare_files(a, b)
    assert len(c.recipe_changes) == 5 and c.recipe_changes[0] == "seed: 1 -> 2"  # the cause before the scores
    assert c.same_pixels and not c.same_image  # the seed differs: not just diagnostics
    assert c.describe().startswith("same pixels; the recipes differ: seed: 1 -> 2; extra.k1")


def test_pixel_differences_are_counted_and_sized(tmp_path):
    img = Image.new("RGB", (8, 8), (100, 100, 100))
    a = _stored(tmp_path, img, RECIPE)
    off = img.copy()
    off.putpixel((0, 0), (101, 100, 100))
    off.putpixel((1, 0), (100, 99, 101))  # two channels of one pixel: still one pixel
    near = compare_files(a, _stored(tmp_path, off, RECIPE))
    assert (near.pixels_differing, near.max_level, near.same_pixels) == (2, 1, False)
    assert "2 of 64 pixels differ, by at most 1 level (likely floating-point arithmetic" in near.describe()
    changed = compare_files(a, _stored(tmp_path, off, {**RECIPE, "seed": 9}))  # and a recipe change: no excuse
    assert changed.describe() == "2 of 64 pixels differ, by at most 1 level; the recipes differ in: seed"
    off.putpixel((7, 7), (0, 100, 100))
    far = compare_files(a, _stored(tmp_path, off, RECIPE))
    assert (far.pixels_differing, far.max_level) == (3, 100) and "arithmetic" not in far.describe()
    other_size = compare_files(a, _stored(tmp_path, Image.new("RGB", (4, 8)), RECIPE))
    assert other_size.size_differs and not other_size.same_image


def test_recipe_changes_walk_nested_fields():
    assert recipe_changes({"a": {"b": [1, 2]}, "c": 1}, {"a": {"b": [1, 3]}, "d": 2}) == (
        "a.b[1]: 2 -> 3", "c: 1 -> None", "d: None -> 2")
    assert recipe_changes({"a": [1]}, {"a": [1, 2]}) == ("a: [1] -> [1, 2]",)


def test_transparency_counts_as_pixels(tmp_path):
    opaque = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    see_through = opaque.copy()
    see_through.putpixel((0, 0), (10, 20, 30, 0))
    files = []
    for name, img in (("opaque", opaque), ("see-through", see_through)):  # as an imported PNG keeps them
        info = PngInfo()
        info.add_text(store.RECIPE_CHUNK, store.recipe_text(RECIPE))
        img.save(tmp_path / f"{name}.png", pnginfo=info)
        files.append(tmp_path / f"{name}.png")
    c = compare_files(*files)
    assert (c.pixels_differing, c.max_level, c.same_image) == (1, 255, False)


def test_the_same_pixels_and_recipe_in_other_bytes_say_so(tmp_path):
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    a = _stored(tmp_path, img, RECIPE)
    other = tmp_path / "recompressed.png"
    with Image.open(a) as png:  # the same pixels and text chunks, written at another compression level
        png.save(other, pnginfo=_text_chunks(png), compress_level=0)
    assert other.read_bytes() != a.read_bytes()
    c = compare_files(a, other)
    assert c.same_image and c.describe() == "same pixels and recipe; only the PNG encoding differs"
    assert c.as_dict()["description"] == c.describe() and c.as_dict()["changed_keys"] == []


def _text_chunks(png):
    info = PngInfo()
    for key, value in png.text.items():
        info.add_text(key, value)
    return info
