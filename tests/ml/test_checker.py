"""The pixel judge: right on the dataset's own drawings of every class, wrong requests fail,
and what a weak generator draws (blobs, blank canvases, stray blobs) is named as such."""

from collections import defaultdict

import numpy as np
import pytest
from PIL import Image, ImageDraw

from studio.ml import checker, shapes

PROMPTS = shapes.eval_prompts(600, phrasing="grammar")
SOURCE = shapes.ShapesSource(seed=shapes.EVAL_SEED, split="eval")
IMAGES = [shapes.render_scene(SOURCE.scene(i)) for i in range(len(PROMPTS))]
RESULTS = [checker.check_image(im, p.attrs) for im, p in zip(IMAGES, PROMPTS)]


def test_ground_truth_scores_near_perfect():
    scores = checker.score_images(IMAGES, [p.attrs for p in PROMPTS])
    for name in ("colour", "shape", "relation", "size", "background"):
        assert scores[name]["value"] >= 0.98, (name, scores[name])
        assert scores[name]["n"] >= 250, name
    assert scores["blank"]["value"] == 0.0 and scores["strays"]["value"] <= 0.01


@pytest.mark.parametrize("key", ["shape", "size", "background", "colour"])
def test_every_class_is_judged_right(key):
    """>= 98 % per shape, per size (small objects too), per background (dark too), per colour."""
    right, seen = defaultdict(int), defaultdict(int)
    for prompt, result in zip(PROMPTS, RESULTS):
        scene = prompt.attrs
        for obj, guess, found in zip(scene["objects"], result.shapes_guessed, result.objects):
            cls = scene["background"] if key == "background" else obj[key]
            seen[cls] += 1
            if key == "background":
                right[cls] += result.background == scene["background"]
            elif key == "size":
                right[cls] += guess == obj["shape"] and found.size == obj["size"]
            else:
                right[cls] += guess == obj["shape"]
    expected = {"shape": shapes.SHAPES, "size": shapes.SIZES, "background": shapes.BACKGROUNDS, "colour": shapes.COLOURS}[key]
    assert set(seen) == set(expected)
    for cls in expected:
        assert right[cls] / seen[cls] >= 0.98, (cls, right[cls], seen[cls])


def test_accepts_arrays_and_other_sizes():
    p = PROMPTS[0]
    big = shapes.render_attrs(p.attrs, canvas=128)
    result = checker.check_image(np.asarray(big), p.attrs)
    assert result.colour_ok and result.shape_ok
    assert checker.check_image(big.convert("RGBA"), p.attrs).colour_ok


def test_wrong_requests_score_near_chance():
    rng = np.random.default_rng(1)
    wrong_colour, wrong_shape, wrong_size, wrong_bg = [], [], [], []
    for p in PROMPTS:
        a = p.attrs
        wrong_colour.append(dict(a, objects=[dict(o, colour=str(rng.choice(shapes.COLOURS))) for o in a["objects"]]))
        wrong_shape.append(dict(a, objects=[dict(o, shape=str(rng.choice([s for s in shapes.SHAPES if s != o["shape"]])))
                                            for o in a["objects"]]))
        wrong_size.append(dict(a, objects=[dict(o, size="small" if o["size"] == "large" else "large") for o in a["objects"]]))
        wrong_bg.append(dict(a, asked={"sizes": True, "background": "dark" if a["background"] == "light" else "light"}))
    assert checker.score_images(IMAGES, wrong_colour)["colour"]["value"] < 0.25  # chance: 1/8 for one object
    assert checker.score_images(IMAGES, wrong_shape)["shape"]["value"] < 0.03
    assert checker.score_images(IMAGES, wrong_size)["size"]["value"] < 0.03
    assert checker.score_images(IMAGES, wrong_bg)["background"]["value"] < 0.03


def test_wrong_relations_score_near_chance():
    rng = np.random.default_rng(2)
    wrong = [dict(p.attrs, relation=str(rng.choice(shapes.RELATIONS))) if p.attrs["relation"] else p.attrs for p in PROMPTS]
    score = checker.score_images(IMAGES, wrong)["relation"]
    assert 0.1 < score["value"] < 0.45  # chance 1/4


def _blob(exponent: float, radius: float, colour="red", background=(200, 200, 200)) -> np.ndarray:
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    inside = (np.abs(xx - 32) / radius) ** exponent + (np.abs(yy - 32) / radius) ** exponent <= 1
    image = np.empty((64, 64, 3), np.uint8)
    image[:] = background
    image[inside] = shapes.PALETTE[colour]
    return image


def test_a_soft_blob_is_no_shape():
    """Halfway between a circle and a square (superellipse, exponent 3) names neither."""
    for radius in (6, 11):
        result = checker.check_image(_blob(3, radius), {"objects": [{"colour": "red", "shape": "square"}]})
        assert result.colour_ok and result.shapes_guessed == [None] and result.shape_ok is False
    assert checker.check_image(_blob(2, 11), {"objects": [{"colour": "red", "shape": "circle"}]}).shape_ok
    assert checker.check_image(_blob(40, 9), {"objects": [{"colour": "red", "shape": "square"}]}).shape_ok


def test_blank_and_washed_out_images():
    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    result = checker.check_image(blank, {"objects": [{"colour": "red"}]})
    assert not result.colour_ok and result.dominant is None and result.blank
    # a generator's faded red (70 % red, 30 % background) still counts as red, not pink
    faded = np.full((64, 64, 3), 200, np.uint8)
    faded[20:40, 20:40] = (0.7 * np.array(shapes.PALETTE["red"]) + 0.3 * 200).astype(np.uint8)
    result = checker.check_image(faded, {"objects": [{"colour": "red"}]})
    assert result.colours_found.keys() == {"red"} and not result.blank


def test_stray_blobs_are_counted():
    image = Image.fromarray(_blob(2, 10))
    draw = ImageDraw.Draw(image)
    draw.rectangle((2, 2, 5, 5), fill=shapes.PALETTE["blue"])  # a 16 px blob nobody asked for
    draw.rectangle((56, 56, 59, 59), fill=shapes.PALETTE["red"])  # a second red piece
    result = checker.check_image(image, {"objects": [{"colour": "red", "shape": "circle"}]})
    assert result.strays == 2 and result.shape_ok
    clean = checker.check_image(_blob(2, 10), {"objects": [{"colour": "red", "shape": "circle"}]})
    assert clean.strays == 0
