"""The bundled ``clip-gen-emoji`` model as installed: trained on emoji pictures without their
captions, it loads offline, is deterministic, and draws the concept a held-out phrasing asks for.

The concept test builds a 200-concept slice of the `emoji` dataset (Twemoji, seconds) and runs a
reduced ``studio eval --dataset emoji`` on it: each image is matched against every picture of the
slice, by the emoji CLIP's image features and by plain pixels. Floors sit below the measured
figures, so they catch a broken export, a changed preprocessing or a sampler that drifted.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from studio.generators import Request
from studio_clip_gen import card, plugin

pytest.importorskip("resvg_py", reason="the emoji dataset needs the emoji extra")

from studio.ml import emoji  # noqa: E402
from studio.ml.evaluate_emoji import evaluate_emoji_generator  # noqa: E402

MODEL_ID = "clip-gen-emoji"
FOLDER = plugin.PACKAGE_DIR / "weights-emoji"
LIMIT = 200  # concepts in the slice: chance is top-1 0.005, top-5 0.025
# Measured on the shipped weights against the 200-concept slice (n=64, seed 0, defaults): CLIP top-1
# 0.17, top-5 0.36, pixels top-1 0.05, top-5 0.125, diversity 0.14. Far from the goals
# (top-5 0.70 / 0.50); the floors catch a model that stopped following its prompt at all.
FLOORS = {"clip_top1": 0.06, "clip_top5": 0.15, "pixel_top5": 0.05}


def _spec():
    specs = {}
    plugin.register_models(register=lambda spec: specs.setdefault(spec.id, spec))
    assert MODEL_ID in specs, f"{FOLDER} is missing from the package"
    return specs[MODEL_ID]


@pytest.fixture(scope="module")
def spec():
    return _spec()


@pytest.fixture(scope="module")
def generator(spec):
    loaded = spec.factory()
    loaded.load("cpu")
    return loaded


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return emoji.build(size=64, styles=["twemoji"], cache_dir=tmp_path_factory.mktemp("emoji"), limit=LIMIT, workers=1)


def draw(generator, spec, prompts, seeds, **params):
    values = {**spec.validate_params({}), **params}
    requests = [Request(p, s, dict(values), index=i) for i, (p, s) in enumerate(zip(prompts, seeds))]
    return [r.image for r in generator.generate(requests, lambda _done, _total: None)]


def test_it_is_small_and_its_card_states_recipe_figures_and_attribution(spec):
    size = sum(p.stat().st_size for p in FOLDER.iterdir())
    assert size <= 40_000_000, size
    model_card = json.loads((FOLDER / card.CARD_JSON).read_text())
    assert model_card["dataset"] == "emoji" and "captions never used" in model_card["data"]
    for stage in ("vqgan", "transformer"):
        assert model_card["training"][stage]["steps"] > 0 and model_card["training"][stage]["minutes"] > 0
    measured = model_card["eval"][f"candidates={plugin.DEFAULTS['candidates']}"]
    assert measured["clip_top5"] >= measured["clip_top1"] > 0.05, measured  # 3,979 pictures: chance 0.001
    assert "Twemoji" in model_card["licence"] and "CC-BY" in model_card["licence"]
    assert spec.draws.startswith("emoji") and "cat" in spec.vocabulary


def test_same_seed_same_pixels_and_another_seed_another_picture(generator, spec):
    prompts = ["a cat face", "a rocket", "a red apple"]
    batch = draw(generator, spec, prompts, [1, 2, 3])
    alone = [draw(generator, spec, [p], [s])[0] for p, s in zip(prompts, [1, 2, 3])]
    for a, b in zip(batch, alone):
        assert a.size == (64, 64)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    other = draw(generator, spec, prompts[:1], [4])[0]
    assert np.abs(np.asarray(other, dtype=float) - np.asarray(batch[0], dtype=float)).mean() > 2


def test_the_vqgan_reconstructs_emoji_pictures(generator, data):
    measured = card.vqgan_report(generator.vqgan, card.emoji_images(data, n=64, seed=1))
    # the slice is the first 200 concepts, mostly detailed faces: 24.7 dB measured, against 27.6 dB
    # on the card over pictures drawn from every concept
    assert measured["psnr_db"] >= 23.0, measured
    assert measured["codes_used"] >= 64, "codebook collapse: few codes carry the pictures"


def test_reduced_eval_finds_the_asked_concept_above_the_floors(generator, spec, data):
    report = evaluate_emoji_generator(generator, data, generator.clip, n=64, seed=0,
                                      params=spec.validate_params({}), diversity_n=8)
    metrics = {k: v["value"] for k, v in report["metrics"].items()}
    for name, floor in FLOORS.items():
        assert metrics[name] >= floor, metrics
    assert metrics["diversity"] > 0.02, metrics  # two seeds of one prompt are not the same picture
