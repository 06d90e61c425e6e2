"""The pixel checker: near 100 % on ground truth, near chance on wrong requests."""

import numpy as np
from PIL import Image

from studio.ml import checker, shapes

PROMPTS = shapes.eval_prompts(200)
IMAGES = [shapes.render_attrs(p.attrs) for p in PROMPTS]


def test_ground_truth_scores_near_perfect():
    scores = checker.score_images(IMAGES, [p.attrs for p in PROMPTS])
    assert scores["colour"]["value"] >= 0.98
    assert scores["relation"]["value"] >= 0.98 and scores["relation"]["n"] > 50
    assert scores["shape_geometric"]["value"] >= 0.9


def test_accepts_arrays_and_other_sizes():
    p = PROMPTS[0]
    big = shapes.render_attrs(p.attrs, canvas=128)
    assert checker.check_image(np.asarray(big), p.attrs).colour_ok
    assert checker.check_image(big.convert("RGBA"), p.attrs).colour_ok


def test_wrong_colours_score_near_chance():
    rng = np.random.default_rng(1)
    wrong = []
    for p in PROMPTS:
        objs = [dict(o, colour=str(rng.choice(shapes.COLOURS))) for o in p.attrs["objects"]]
        wrong.append(dict(p.attrs, objects=objs))
    value = checker.score_images(IMAGES, wrong)["colour"]["value"]
    assert value < 0.25  # chance: 1/8 for one object, less for two


def test_wrong_relations_score_near_chance():
    rng = np.random.default_rng(2)
    wrong = [dict(p.attrs, relation=str(rng.choice(shapes.RELATIONS))) if p.attrs["relation"] else p.attrs for p in PROMPTS]
    score = checker.score_images(IMAGES, wrong)["relation"]
    assert 0.1 < score["value"] < 0.45  # chance 1/4


def test_shuffled_attributes_score_near_chance():
    order = np.random.default_rng(3).permutation(len(PROMPTS))
    scores = checker.score_images(IMAGES, [PROMPTS[i].attrs for i in order])
    assert scores["colour"]["value"] < 0.3


def test_blank_and_washed_out_images():
    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    result = checker.check_image(blank, {"objects": [{"colour": "red"}]})
    assert not result.colour_ok and result.dominant is None
    # a generator's faded red (70 % red, 30 % background) still counts as red, not pink
    faded = np.full((64, 64, 3), 200, np.uint8)
    faded[20:40, 20:40] = (0.7 * np.array(shapes.PALETTE["red"]) + 0.3 * 200).astype(np.uint8)
    assert checker.check_image(faded, {"objects": [{"colour": "red"}]}).colours_found.keys() == {"red"}
