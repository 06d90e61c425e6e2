"""Zero-shot evaluation returns sane numbers for any CLIP."""

import torch

from studio.ml import clip_configs, shapes
from studio.ml.zero_shot import evaluate_zero_shot, heldout_scenes, relation_cosines


def test_evaluate_random_model():
    torch.manual_seed(0)
    model = clip_configs.create_small_clip()
    result = evaluate_zero_shot(model, n=16)
    for key in ("colour", "shape", "relation", "order", "score"):
        assert 0.0 <= result[key] <= 1.0
    assert -1.0 <= result["cos_flip"] <= 1.0 and -1.0 <= result["cos_swap"] <= 1.0
    assert result["n"] == 16 and model.training  # training mode restored


def test_cosines_of_identical_encoders_are_one():
    model = clip_configs.create_small_clip().eval()
    with torch.no_grad():
        model.positional_embedding.zero_()  # no position information: word order is invisible
        for block in model.transformer.resblocks:
            block.attn.in_proj_weight.zero_()  # no attention: the end token sees only itself
    cos = relation_cosines(model, pairs=4)
    assert cos["cos_flip"] > 0.999 and cos["cos_swap"] > 0.999


def test_heldout_scenes_are_from_the_eval_split():
    scenes = heldout_scenes(5, two_objects=True)
    assert all(len(s.objects) == 2 for s in scenes)
    assert scenes[0] == shapes.ShapesSource(split="eval", two_object_share=1.0).scene(0)
