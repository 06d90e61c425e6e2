"""`studio eval --dataset emoji`: a generator that draws the asked concept's picture scores top-1 on
both matchers, one that draws another concept scores near zero, and seeds are told apart."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("resvg_py", reason="the emoji dataset needs the emoji extra")

from studio.generators import Result  # noqa: E402
from studio.ml import emoji  # noqa: E402
from studio.ml.evaluate_emoji import (evaluate_emoji_generator, eval_prompts, ranked_concepts)  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return emoji.build(size=SIZE, styles=["twemoji"], cache_dir=tmp_path_factory.mktemp("emoji"), limit=60, workers=1)


@pytest.fixture(scope="module")
def clip():
    from studio.ml import BUNDLED_CLIP_FILE
    from studio.ml.clip_load import load_bundled_clip

    return load_bundled_clip(BUNDLED_CLIP_FILE)


class Drawer:
    """Draws the dataset's picture of the asked concept (``mode="truth"``), of another concept
    (``"lie"``), or the truth with seed-dependent noise (``"noisy"``)."""

    def __init__(self, data, mode: str) -> None:
        self.mode, self.data = mode, data
        self.asked = {p["caption"]: p["concept"] for p in data.heldout_prompts()}
        self.first = {}
        for i, c in enumerate(data.concepts):
            self.first.setdefault(c, i)
        self.concepts = sorted(self.first)

    def describe(self):
        return {"model": f"drawer-{self.mode}"}

    def generate(self, requests, progress):
        out = []
        for r in requests:
            concept = self.asked[r.prompt]
            if self.mode == "lie":
                concept = self.concepts[(self.concepts.index(concept) + 1) % len(self.concepts)]
            picture = self.data.images[self.first[concept]].astype(np.int16)
            if self.mode == "noisy":
                rng = np.random.default_rng(r.seed)
                picture = picture + rng.integers(-12, 13, picture.shape)
            out.append(Result(Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))))
        return out


def test_the_truth_is_top1_by_clip_and_by_pixels_and_another_concept_is_not(data, clip):
    truth = evaluate_emoji_generator(Drawer(data, "truth"), data, clip, n=40, seed=1, diversity_n=8)
    m = truth["metrics"]
    assert m["clip_top1"]["value"] == 1.0 and m["pixel_top1"]["value"] == 1.0
    assert m["clip_top5"]["value"] == 1.0 and m["clip_top1"]["n"] == 40
    assert m["diversity"]["value"] == 0.0  # the same picture for every seed
    lie = evaluate_emoji_generator(Drawer(data, "lie"), data, clip, n=40, seed=1, diversity_n=8)["metrics"]
    assert lie["pixel_top1"]["value"] <= 0.05 and lie["clip_top1"]["value"] <= 0.05
    assert lie["fd"]["value"] >= 0 and truth["metrics"]["fd"]["value"] < lie["fd"]["value"]


def test_seed_noise_counts_as_diversity_and_does_not_hide_the_concept(data, clip):
    m = evaluate_emoji_generator(Drawer(data, "noisy"), data, clip, n=24, seed=2, diversity_n=8)["metrics"]
    assert 0.01 < m["diversity"]["value"] < 0.1
    assert m["pixel_top1"]["value"] == 1.0


def test_prompts_are_held_out_phrasings_in_a_seeded_order(data):
    a, b = eval_prompts(data, 30, seed=5), eval_prompts(data, 30, seed=5)
    assert a == b and a != eval_prompts(data, 30, seed=6)
    training = set(data.captions("train"))
    assert all(p["caption"] not in training for p in a)
    assert len(eval_prompts(data, 10**6)) == len(data.heldout_prompts())


def test_concepts_rank_by_their_best_picture_without_repeats():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7, 0.2]])
    assert ranked_concepts(scores, ["a", "a", "b", "c", "d"], k=3) == [["a", "c", "d"]]


def test_the_command_line_names_a_missing_dataset_package_in_one_line(monkeypatch, tmp_path):
    import subprocess
    import sys

    env = {"STUDIO_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    code = ("import sys; sys.modules['resvg_py'] = None; from studio.cli import main; "
            "sys.argv = ['studio', 'eval', '-m', 'galip', '--dataset', 'emoji', '--n', '4']; main()")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "emoji" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_zero_shot_concepts_ranks_concepts_by_their_best_picture(data, monkeypatch):
    """A CLIP whose text embedding points at the asked concept's pictures for every other prompt,
    and at another concept's for the rest, scores top-1 0.5 and top-5 between 0.5 and 1."""
    from studio.ml import evaluate_emoji, zero_shot

    concepts = sorted(set(data.concepts))
    axis = {c: i for i, c in enumerate(concepts)}
    prompts = evaluate_emoji.eval_prompts(data, 40, seed=3)

    def pictures(_clip, images):
        return torch.nn.functional.one_hot(torch.tensor([axis[c] for c in data.concepts]), len(concepts)).float()

    def texts(_clip, captions, _encoder=None):
        asked = {p["caption"]: p["concept"] for p in prompts}
        rows = []
        for k, caption in enumerate(captions):
            target = axis[asked[caption]] if k % 2 == 0 else (axis[asked[caption]] + 1) % len(concepts)
            rows.append(torch.nn.functional.one_hot(torch.tensor(target), len(concepts)).float()
                        + 0.01 * torch.arange(len(concepts)).float() / len(concepts))
        return torch.stack(rows)

    monkeypatch.setattr(evaluate_emoji, "clip_features", pictures)
    monkeypatch.setattr(zero_shot, "embed_texts", texts)
    result = evaluate_emoji.zero_shot_concepts(None, data, n=40, seed=3)
    assert result["concept_top1"] == 0.5 and result["n"] == 40
    assert 0.5 <= result["concept_top5"] <= 1.0 and result["score"] == (0.5 + result["concept_top5"]) / 2


def test_the_default_judge_of_emoji_is_a_clip_that_saw_emoji(monkeypatch, tmp_path):
    """`--clip bundled` means the emoji CLIP for --dataset emoji; without one installed the eval
    says so in one line instead of asking the shapes CLIP, which never saw an emoji."""
    from studio.ml import BUNDLED_CLIP_FILE, evaluate
    from studio.ml.clip_load import load_bundled_clip

    monkeypatch.setattr(evaluate, "EMOJI_CLIP_FILE", tmp_path / "missing.safetensors")
    with pytest.raises(evaluate.EvalError, match="no CLIP trained on emoji is installed") as info:
        evaluate.load_eval_clip("bundled", "cpu", "emoji")
    assert "\n" not in str(info.value)
    monkeypatch.setattr(evaluate, "EMOJI_CLIP_FILE", BUNDLED_CLIP_FILE)  # any installed small-CLIP file
    monkeypatch.setattr(evaluate, "BUNDLED_CLIP", tmp_path / "missing.safetensors")  # so the shapes one cannot answer
    judge = evaluate.load_eval_clip("bundled", "cpu", "emoji")
    want = load_bundled_clip(BUNDLED_CLIP_FILE).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in judge.state_dict().items())
    with pytest.raises(evaluate.EvalError, match="the bundled CLIP is not installed"):
        evaluate.load_eval_clip("bundled", "cpu")  # shapes asks the shapes CLIP, never the emoji one
