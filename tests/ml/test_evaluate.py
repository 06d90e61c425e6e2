"""`studio eval` scores a generator that draws the truth near 100% and a wrong one near chance."""

import json
import random

import pytest
import torch

from studio.generators import ModelSpec, Result
from studio.ml import shapes
from studio.ml.evaluate import EvalError, evaluate_model
from studio.plugins import get_registry


class Oracle:
    """Draws exactly the scene each eval prompt describes (or, when ``lie``, another one)."""

    def __init__(self, lie: bool, lie_on_two: bool = False) -> None:
        self.lie, self.lie_on_two = lie, lie_on_two
        prompts = shapes.eval_prompts(64, seed=3, phrasing="grammar")
        self.truth = {p.text: p.attrs for p in prompts}
        self.others = [p.attrs for p in prompts]

    def load(self, device):
        pass

    def describe(self):
        return {"model": "oracle", "weights_sha256": None}

    def generate(self, requests, progress):
        out = []
        for r in requests:
            lie = self.lie or (self.lie_on_two and len(self.truth[r.prompt]["objects"]) == 2)
            attrs = random.Random(r.seed).choice(self.others) if lie else self.truth[r.prompt]
            out.append(Result(shapes.render_attrs(attrs)))
        return out


@pytest.fixture
def tiny_clip(tmp_path):
    from safetensors.torch import save_file

    from studio.ml.clip_configs import create_small_clip

    torch.manual_seed(0)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in create_small_clip("studio-tiny-64").state_dict().items()}, str(path))
    return f"studio-tiny-64:{path}"


@pytest.fixture
def oracles(settings):
    registry = get_registry(settings.load_plugins)
    registry.models["oracle-true"] = ModelSpec(id="oracle-true", plugin="test", factory=lambda: Oracle(False))
    registry.models["oracle-lie"] = ModelSpec(id="oracle-lie", plugin="test", factory=lambda: Oracle(True))
    registry.models["oracle-half"] = ModelSpec(id="oracle-half", plugin="test",
                                               factory=lambda: Oracle(False, lie_on_two=True))
    yield
    for name in ("oracle-true", "oracle-lie", "oracle-half"):
        registry.models.pop(name)


@pytest.mark.usefixtures("oracles")
def test_truth_scores_near_perfect_and_wrong_images_near_chance(settings, tiny_clip):
    truth = evaluate_model(settings, "oracle-true", n=64, seed=3, clip=tiny_clip)["metrics"]
    assert truth["colour"]["value"] >= 0.98 and truth["relation"]["value"] >= 0.95
    assert truth["shape"]["value"] >= 0.95 and truth["size"]["value"] >= 0.95 and truth["background"]["value"] >= 0.95
    assert truth["relation"]["n"] + truth["clip_shape"]["n"] == 64 and truth["blank"]["value"] == 0.0
    lie = evaluate_model(settings, "oracle-lie", n=64, seed=3, clip=tiny_clip)["metrics"]
    assert lie["colour"]["value"] < 0.5 and lie["relation"]["value"] < 0.5
    assert -1.0 <= lie["clip_score"]["value"] <= 1.0 and 0.0 <= lie["clip_shape"]["value"] <= 1.0
    assert lie["shape"]["value"] < 0.5 and lie["background"]["value"] < 0.8


@pytest.mark.usefixtures("oracles")
def test_one_and_two_object_prompts_are_also_scored_apart(settings, tiny_clip):
    report = evaluate_model(settings, "oracle-half", n=64, seed=3, clip=tiny_clip)
    json.loads(json.dumps(report), parse_constant=lambda name: pytest.fail(f"{name} in the report"))  # strict JSON
    one, two = report["by_objects"]["1"], report["by_objects"]["2"]
    assert one["shape"]["n"] + two["shape"]["n"] == report["metrics"]["shape"]["n"] == 64
    assert one["shape"]["value"] >= 0.95 and "relation" not in one  # drawn true; no relation asked
    assert two["relation"]["value"] < 0.5 and two["colour"]["value"] < 0.5  # drawn wrong
    assert report["metrics"]["shape"]["value"] == pytest.approx(
        (one["shape"]["value"] * one["shape"]["n"] + two["shape"]["value"] * two["shape"]["n"]) / 64)


@pytest.mark.usefixtures("oracles")
def test_a_figure_no_prompt_asks_is_null_in_strict_json_and_a_dash_in_the_table(settings, tiny_clip):
    from click.testing import CliRunner

    from studio.cli import cli

    args = ["eval", "--model", "oracle-true", "--n", "1", "--seed", "3", "--clip", tiny_clip]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):],
                        parse_constant=lambda name: pytest.fail(f"{name} in the report"))
    metrics = report["metrics"]
    unasked = [name for name, metric in metrics.items() if metric["n"] == 0]
    # one prompt: one object (no relation asked) or two (no CLIP shape choice)
    assert unasked and all(metrics[name]["value"] is None for name in unasked)
    assert all(metric["value"] is not None for metric in metrics.values() if metric["n"])
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0 and "Traceback" not in table.output
    row = next(line for line in table.output.splitlines() if f" {unasked[0]} " in line)
    assert "-" in row.split(unasked[0], 1)[1] and "nan" not in table.output.lower()


def test_frechet_distance_refuses_a_set_of_one_and_is_zero_for_a_set_against_itself():
    import numpy as np

    from studio.ml.frechet import frechet_distance

    feats = np.random.default_rng(0).normal(size=(64, 8))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 images per set, got 1 and 64"):
        frechet_distance(feats[:1], feats)


@pytest.mark.parametrize("args", [["--fd", "1"], ["--dataset", "emoji", "--n", "1"]])
def test_a_frechet_distance_of_one_image_is_refused_in_one_line(args):
    from click.testing import CliRunner

    from studio.cli import cli

    result = CliRunner().invoke(cli, ["eval", "--model", "galip", *args])
    assert result.exit_code == 2 and "at least 2 images" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.usefixtures("oracles")
def test_bad_clip_and_unknown_model_are_clear(settings, tmp_path):
    with pytest.raises(EvalError, match="unknown model"):
        evaluate_model(settings, "nope", n=4)
    with pytest.raises(EvalError, match="ARCH:PATH"):
        evaluate_model(settings, "oracle-true", n=4, seed=3, clip="nonsense")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(EvalError, match="bad.safetensors"):
        evaluate_model(settings, "oracle-true", n=4, seed=3, clip=f"studio-tiny-64:{bad}")
