"""The default ``clip-gen`` model as installed: trained on `shapes` images without their captions,
it loads offline, is deterministic, and follows prompts it only ever saw as CLIP image embeddings.

Thresholds sit below the numbers on the model card (``model_card.json``), so they catch a broken
export, a changed preprocessing or a sampler that no longer matches training.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from studio.generators import Request
from studio.ml import checker, shapes
from studio.ml.evaluate import evaluate_generator
from studio_clip_gen import card, plugin

#: The issue's floors for `studio eval`: colour and two-object relation.
COLOUR_FLOOR, RELATION_FLOOR = 0.85, 0.60


def _spec():
    specs = {}
    plugin.register_models(register=lambda spec: specs.setdefault(spec.id, spec))
    return specs["clip-gen"]


#: What a job with no --param gets: the plugin's defaults with the model card's (e.g. its guidance).
DEFAULTS = {**plugin.DEFAULTS, **_spec().validate_params({})}


@pytest.fixture(scope="module")
def clip_gen():
    assert (plugin.BUNDLED_DIR / plugin.MODEL_JSON).is_file(), "the bundled clip-gen weights are missing from the package"
    generator = _spec().factory()
    generator.load("cpu")
    return generator


@pytest.fixture(scope="module")
def model_card():
    return json.loads((plugin.BUNDLED_DIR / card.CARD_JSON).read_text())


def draw(generator, prompts, seeds, **params):
    requests = [Request(p, s, {**DEFAULTS, **params}, index=i) for i, (p, s) in enumerate(zip(prompts, seeds))]
    return [r.image for r in generator.generate(requests, lambda _done, _total: None)]


def test_card_states_training_and_the_eval_floors_are_met(model_card):
    assert "captions never used" in model_card["data"]
    assert model_card["training"]["vqgan"]["steps"] > 0 and model_card["training"]["transformer"]["steps"] > 0
    assert model_card["training"]["vqgan"]["minutes"] > 0 and model_card["training"]["transformer"]["minutes"] > 0
    # the row a plain `studio eval --model clip-gen` reproduces meets the floors
    stated = {k: v for k, v in model_card["defaults"].items() if k != "guidance"}
    assert stated == {k: v for k, v in plugin.DEFAULTS.items() if k in stated} and {"candidates", "keep"} <= set(stated)
    default = model_card["eval"][f"candidates={plugin.DEFAULTS['candidates']}"]
    assert default["colour"] >= COLOUR_FLOOR and default["relation"] >= RELATION_FLOOR, default
    # the plain sampler is stated too, and re-ranking is what the default buys
    plain = model_card["eval"]["candidates=1"]
    assert plain["colour"] < default["colour"] and plain["relation"] < default["relation"], (plain, default)


def test_vqgan_reconstructs_held_out_scenes_at_the_stated_psnr(clip_gen, model_card):
    measured = card.vqgan_report(clip_gen.vqgan, card.shapes_images(n=64, seed=1))
    stated = model_card["vqgan"]["psnr_db"]
    assert measured["psnr_db"] >= stated - 1.0, (measured, stated)
    assert measured["psnr_db"] >= 24.0
    assert measured["codes_used"] >= 32, "codebook collapse: few codes carry the images"


def test_same_seed_same_pixels_and_batching_changes_nothing(clip_gen):
    prompts = ["a red circle", "a blue square above a green triangle", "a yellow star"]
    batch = draw(clip_gen, prompts, [1, 2, 3])
    alone = [draw(clip_gen, [p], [s])[0] for p, s in zip(prompts, [1, 2, 3])]
    for a, b in zip(batch, alone):
        assert a.size == (64, 64)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(draw(clip_gen, prompts[:1], [4])[0]))
    # re-ranking never changes what a seed gives: candidate 0 of a re-ranked request is the plain sample
    reranked = clip_gen.generate([Request(prompts[0], 1, {**DEFAULTS, "candidates": 3}, index=0)], lambda _d, _t: None)[0]
    kept = reranked.extra["kept"][0]
    again = draw(clip_gen, prompts[:1], [kept["seed"]], candidates=1)[0]
    assert np.array_equal(np.asarray(reranked.image), np.asarray(again))


def test_the_colour_asked_for_is_the_colour_drawn(clip_gen):
    # 16 single objects: the reduced eval below judges colour on 64 more prompts
    prompts = [p for p in shapes.eval_prompts(96, seed=11) if len(p.attrs["objects"]) == 1][:16]
    images = draw(clip_gen, [p.text for p in prompts], range(len(prompts)))
    results = [checker.check_image(im, p.attrs) for im, p in zip(images, prompts)]
    accuracy = np.mean([r.colour_ok for r in results])
    assert accuracy >= COLOUR_FLOOR, f"colour accuracy {accuracy:.2f}"
    leads = np.mean([r.dominant == p.attrs["objects"][0]["colour"] for r, p in zip(results, prompts)])
    assert leads >= 0.5, f"asked colour dominant in {leads:.2f}"


def test_reduced_studio_eval_is_above_the_floors(clip_gen):
    report = evaluate_generator(clip_gen, n=64, seed=0, params=dict(DEFAULTS))
    metrics = report["metrics"]
    assert metrics["colour"]["value"] >= COLOUR_FLOOR, metrics
    assert metrics["relation"]["value"] >= RELATION_FLOOR, metrics
    # judged by pixels, as shipped (16x16 codes, guidance 2, the claims classifier ranking; these
    # 64 prompts measured shape 0.69, size 0.87, relation 0.93, background 0.98, strays 0.03; n=256
    # on the card: shape 0.68, size 0.83); the goal shape >= 0.90 is not reached by these weights
    assert metrics["shape"]["value"] >= 0.55, metrics
    assert metrics["size"]["value"] >= 0.70, metrics
    assert metrics["relation"]["value"] >= 0.80, metrics
    assert metrics["background"]["value"] >= 0.85, metrics
    assert metrics["blank"]["value"] == 0.0, metrics
    assert metrics["strays"]["value"] <= 0.15, metrics


def test_image_conditioning_redraws_the_scene_of_the_image(clip_gen, tmp_path):
    """What the transformer was trained on: an image's CLIP embedding gives back its colours."""
    from studio.config import load_settings
    from studio.inputs import store_input

    prompts = [p for p in shapes.eval_prompts(48, seed=21) if len(p.attrs["objects"]) == 1][:12]
    ok = []
    for i, prompt in enumerate(prompts):
        path = tmp_path / f"{i}.png"
        shapes.render_attrs(prompt.attrs).save(path)
        image = draw(clip_gen, [""], [i], image=store_input(load_settings(), str(path)))[0]
        ok.append(checker.check_image(image, prompt.attrs).colour_ok)
    assert np.mean(ok) >= 0.75, ok


def test_the_model_knows_the_words_it_was_trained_on():
    specs = {}
    plugin.register_models(register=lambda spec: specs.setdefault(spec.id, spec))
    spec = specs["clip-gen"]
    assert spec.vocabulary == tuple(shapes.vocabulary()) and spec.draws == "coloured shapes" and spec.licence
    assert spec.unknown_words("a purple dog") == ["dog"] and "eval" in spec.card


def test_bundled_claims_classifier_reads_held_out_drawings_and_scores_every_grammar_prompt(clip_gen, model_card):
    """The re-ranking classifier shipped in the folder reads every (colour, shape) and (colour,
    size) pair of held-out drawings right for most of them (its card: 0.93 on VQGAN round trips),
    and the default model records a claims score for each candidate of a grammar prompt."""
    import torch

    from studio.ml.datasets import ShapesDataset

    assert clip_gen.claims is not None and model_card["claims"]["file"] == "claims.safetensors"
    held = ShapesDataset(size=64, split="eval")
    items = [held[i] for i in range(64)]
    images = torch.stack([item["image"] for item in items])
    targets = torch.stack([torch.from_numpy(shapes.claim_targets(
        [(o["colour"], o["shape"], o["size"]) for o in item["attrs"]["objects"]])[0]) for item in items])
    with torch.no_grad():
        read = clip_gen.claims(images) > 0
    assert (read == (targets > 0)).all(dim=1).float().mean().item() >= 0.8
    result = clip_gen.generate([Request("a small red circle above a large blue square", 3, {**DEFAULTS}, index=0)],
                               lambda _d, _t: None)[0]
    from studio_clip_gen.generator import rank_scores

    candidates = sorted(result.extra["candidates"], key=lambda c: c["index"])
    assert all("claims_score" in c for c in candidates)
    assert clip_gen.claims_clip_weight == model_card["claims"]["clip_weight"] == 0.0  # the classifier alone
    rank = rank_scores([(c["clip_score"], c["claims_score"]) for c in candidates], clip_gen.claims_clip_weight)
    kept = result.extra["kept"][0]["index"]
    assert kept == max((j for j in range(len(rank)) if j not in result.extra.get("near_blank", [])),
                       key=lambda j: (rank[j], -j))
