"""The default ``galip`` model as installed: it loads offline, is deterministic, and draws
the colours a prompt asks for (judged from pixels by ``studio.ml.checker``).

Thresholds sit below the numbers on the model card (``studio eval galip``), so they catch a
broken export, a changed preprocessing or a sampler that no longer matches training.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from studio.generators import Request
from studio.ml import checker, shapes
from studio_galip import model_dir, plugin


@pytest.fixture(scope="module")
def galip():
    specs = {}
    plugin.register_models(register=lambda spec: specs.setdefault(spec.id, spec))
    spec = specs["galip"]
    assert model_dir.BUNDLED_WEIGHTS.is_file(), "the bundled GALIP weights are missing from the package"
    generator = spec.factory()
    generator.load("cpu")
    return generator


def draw(generator, prompts, seeds):
    results = generator.generate([Request(p, s, {}, index=i) for i, (p, s) in enumerate(zip(prompts, seeds))],
                                 lambda _done, _total: None)
    return [r.image for r in results]


def test_card_describes_the_bundled_weights():
    card = json.loads(model_dir.BUNDLED_CARD.read_text())
    assert card["clip"]["arch"] == "studio-bundled"
    assert card["eval"]["colour"]["value"] >= 0.7
    assert model_dir.BUNDLED_WEIGHTS.stat().st_size < 20_000_000


def test_same_seed_same_pixels_and_batching_changes_nothing(galip):
    prompts = ["a red circle", "a blue square above a green triangle", "a yellow star"]
    batch = draw(galip, prompts, [1, 2, 3])
    alone = [draw(galip, [p], [s])[0] for p, s in zip(prompts, [1, 2, 3])]
    for a, b in zip(batch, alone):
        assert a.size == (64, 64)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    other_seed = draw(galip, prompts[:1], [4])[0]
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(other_seed))


def test_the_colour_asked_for_is_the_colour_drawn(galip):
    prompts = [p for p in shapes.eval_prompts(96, seed=11) if len(p.attrs["objects"]) == 1][:32]
    images = draw(galip, [p.text for p in prompts], range(len(prompts)))
    results = [checker.check_image(im, p.attrs) for im, p in zip(images, prompts)]
    accuracy = np.mean([r.colour_ok for r in results])
    assert accuracy >= 0.9, f"colour accuracy {accuracy:.2f}"
    # and not by painting every colour everywhere: the asked colour leads in most images
    leads = np.mean([r.dominant == p.attrs["objects"][0]["colour"] for r, p in zip(results, prompts)])
    assert leads >= 0.5, f"asked colour dominant in {leads:.2f}"


def test_the_model_knows_the_words_it_was_trained_on():
    """The card's vocabulary is the shapes grammar's (written into the JSON; registration reads JSON only)."""
    specs = {}
    plugin.register_models(register=lambda spec: specs.setdefault(spec.id, spec))
    spec = specs["galip"]
    assert spec.vocabulary == tuple(shapes.vocabulary())
    assert spec.draws == "coloured shapes" and spec.licence and spec.card["eval"]["colour"]["value"] > 0.9
    assert spec.unknown_words("a red circle above a blue square") == []
    assert spec.unknown_words("a red cat on a dark background") == ["cat"]


def test_submit_with_unknown_words_says_so_in_one_line_and_runs(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from studio.cli import add_plugin_commands, cli

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))
    monkeypatch.setenv("STUDIO_LOAD_PLUGINS", "galip")
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    add_plugin_commands(cli)
    result = CliRunner().invoke(cli, ["submit", "a red cat", "-m", "galip", "--seed", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "unknown words" in line]
    assert lines == ["the galip model draws coloured shapes; unknown words: cat"], result.stderr


def test_reduced_studio_eval_judged_by_pixels_holds_the_shipped_figures(galip):
    """`studio eval`'s pixel judge on 64 prompts of the whole grammar, as the card measures it.

    The floors guard what the shipped weights do (seed 0: colour 1.00, relation 1.00, size 0.97,
    background 0.95, shape 0.64, no blank canvas, no strays). Size and background are at the
    issue's goals (>= 0.85, >= 0.90; background's floor leaves room for four more misses among its
    41 prompts, it is 0.98 at n=256); shape is not yet (>= 0.90): one object reads right 0.84 of the time at
    n=256, two objects 0.39.
    """
    from studio.ml.evaluate import evaluate_generator

    metrics = evaluate_generator(galip, n=64, seed=0, batch=32)["metrics"]
    assert metrics["colour"]["value"] >= 0.93, metrics
    assert metrics["relation"]["value"] >= 0.88, metrics
    assert metrics["size"]["value"] >= 0.85, metrics
    assert metrics["background"]["value"] >= 0.85, metrics
    assert metrics["shape"]["value"] >= 0.52, metrics
    assert metrics["blank"]["value"] == 0.0, metrics
    assert metrics["clip_shape"]["value"] > metrics["shape"]["value"]  # the lenient judge stays lenient


def test_card_states_the_pixel_figures_and_what_changed():
    card = json.loads(model_dir.BUNDLED_CARD.read_text())
    now, before = card["eval"], card["eval_before"]
    assert now["judge"].startswith("pixels") and now["colour"]["n"] == 256
    assert now["background"]["value"] >= 0.9 and before["background"]["value"] >= 0.9  # kept since leg 2
    # each ship is for shape; the other figures hold their goals, or do not get worse where they miss them
    assert now["shape"]["value"] > before["shape"]["value"] and now["size"]["value"] >= 0.85
    assert now["strays"]["value"] <= max(before["strays"]["value"], 0.01) and now["fd"]["n"] == 1000
    assert now["by_objects"]["2"]["shape"]["n"] + now["by_objects"]["1"]["shape"]["n"] == now["shape"]["n"]
    assert card["continued_from"]["weights_sha256"] == before["weights_sha256"] != card["weights_sha256"]
