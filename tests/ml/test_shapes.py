"""The procedural shapes data: determinism, attributes that match the pixels, caption grammar."""

import re

import numpy as np
import pytest

from studio.ml import shapes


def test_same_seed_and_index_give_the_same_sample_in_any_order():
    a = shapes.ShapesSource(seed=3)
    b = shapes.ShapesSource(seed=3)
    for i in (5, 0, 17):
        sa, sb = a.sample(i), b.sample(i)
        assert sa.scene == sb.scene and sa.caption == sb.caption
        assert np.array_equal(np.asarray(sa.image), np.asarray(sb.image))


def test_seeds_and_splits_give_different_streams():
    scenes = lambda **kw: [shapes.ShapesSource(**kw).scene(i) for i in range(20)]  # noqa: E731
    assert scenes(seed=0) != scenes(seed=1)
    assert scenes(seed=0, split="train") != scenes(seed=0, split="eval")
    with pytest.raises(ValueError):
        shapes.sample_scene(0, 0, split="test")


def test_attributes_match_the_pixels():
    for i in range(40):
        scene = shapes.sample_scene(0, i, canvas=64)
        image = np.asarray(shapes.render_scene(scene)).astype(int)
        assert image.shape == (64, 64, 3)
        assert np.abs(image[0, 0] - np.array(scene.background_rgb)).max() <= 1
        for obj in scene.objects:
            x, y = (int(round(v)) for v in obj.centre)
            assert tuple(image[y, x]) == shapes.PALETTE[obj.colour], (i, obj)
            x0, y0, x1, y1 = obj.bbox
            assert -0.5 <= x0 and x1 <= 64.5 and -0.5 <= y0 and y1 <= 64.5


def test_two_object_relation_holds_and_objects_do_not_overlap():
    for i in range(200):
        scene = shapes.sample_scene(1, i, two_object_share=1.0)
        a, b = scene.objects
        assert a.colour != b.colour
        dx, dy = b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]
        axis_ok = {"left of": dx > 2 * abs(dy), "right of": -dx > 2 * abs(dy), "above": dy > 2 * abs(dx),
                   "below": -dy > 2 * abs(dx)}[scene.relation]
        assert axis_ok
        assert max(abs(dx), abs(dy)) > a.half + b.half


def test_every_value_of_every_attribute_occurs():
    scenes = [shapes.sample_scene(0, i) for i in range(600)]
    objs = [o for s in scenes for o in s.objects]
    assert {o.colour for o in objs} == set(shapes.COLOURS)
    assert {o.shape for o in objs} == set(shapes.SHAPES)
    assert {o.size for o in objs} == set(shapes.SIZES)
    assert {s.relation for s in scenes} == set(shapes.RELATIONS) | {None}
    assert {s.background for s in scenes} == set(shapes.BACKGROUNDS)


GRAMMAR = re.compile(
    r"^(?P<np>an? (?:(?:small|large) )?\w+ (?:circle|square|triangle|diamond))"
    r"(?: (?:to the left of|left of|to the right of|right of|above|below) (?P=np)?"
    r"an? (?:(?:small|large) )?\w+ (?:circle|square|triangle|diamond))?"
    r"(?: on a (?:light|dark) background)?$"
)


def test_captions_follow_the_grammar_and_are_true():
    for i in range(100):
        scene = shapes.sample_scene(0, i)
        caps = shapes.captions(scene)
        assert len({c.text for c in caps}) == len(caps) >= 4
        for c in caps:
            assert GRAMMAR.match(c.text), c.text
            assert shapes.caption_is_true(c, scene)
            words = c.text.split()
            for art, nxt in zip(words, words[1:]):
                if art in ("a", "an"):
                    assert art == shapes.article(nxt), c.text


def test_examples_from_the_spec():
    assert shapes.noun_phrase("orange", "square") == "an orange square"
    assert shapes.noun_phrase("blue", "square", "large") == "a large blue square"
    c = shapes.make_caption([("red", "circle", None), ("green", "diamond", None)], "left of")
    assert c.text == "a red circle to the left of a green diamond"
    assert shapes.make_caption([("yellow", "triangle", "small")], None, "dark").text == "a small yellow triangle on a dark background"


def test_swapped_caption_is_a_positive_and_hard_negatives_are_false():
    rng = np.random.default_rng(0)
    for i in range(300):
        scene = shapes.sample_scene(0, i)
        for c in shapes.captions(scene):
            negs = shapes.hard_negatives(c, rng)
            assert len(negs) == 4
            assert not any(shapes.caption_is_true(n, scene) for n in negs)
            assert all(n.key() != c.key() for n in negs)
        if scene.relation:
            a, b = scene.objects
            swapped = shapes.make_caption([(b.colour, b.shape, None), (a.colour, a.shape, None)], shapes.INVERSE[scene.relation])
            assert shapes.caption_is_true(swapped, scene)
            assert swapped.key() == shapes.canonical_caption(scene).key()


def test_eval_prompts_are_held_out_and_renderable():
    prompts = shapes.eval_prompts(30)
    assert prompts == shapes.eval_prompts(30)
    train = {shapes.canonical_caption(shapes.sample_scene(0, i)).text for i in range(30)}
    assert [p.text for p in prompts] != sorted(train)
    for p in prompts:
        image = shapes.render_attrs(p.attrs)
        assert image.size == (64, 64)
        assert shapes.canonical_caption(shapes.scene_from_attrs(p.attrs)).text == p.text
    bare = {"objects": [{"shape": "circle", "colour": "red", "size": "small"}, {"shape": "square", "colour": "blue", "size": "large"}],
            "relation": "above"}
    assert shapes.render_attrs(bare, canvas=32).size == (32, 32)


def test_canvas_size_is_a_parameter():
    scene = shapes.sample_scene(0, 2, canvas=128)
    assert shapes.render_scene(scene).size == (128, 128)
    assert shapes.render_scene(shapes.with_canvas(scene, 32)).size == (32, 32)


def test_claim_targets_mark_the_pairs_a_caption_names_and_only_decide_stated_sizes():
    from studio.ml.shapes import CLAIM_CLASSES, claim_targets

    targets, mask = claim_targets([("red", "circle", None), ("blue", "square", None)])
    on = {CLAIM_CLASSES[i] for i in np.flatnonzero(targets)}
    assert on == {"red circle", "blue square"}
    decided = {CLAIM_CLASSES[i] for i in np.flatnonzero(mask)}
    assert "green triangle" in decided and "red small" not in decided and "red large" not in decided

    targets, mask = claim_targets([("red", "circle", "small"), ("blue", "square", "large")])
    on = {CLAIM_CLASSES[i] for i in np.flatnonzero(targets)}
    assert on == {"red circle", "blue square", "red small", "blue large"}
    assert mask.all()
    with pytest.raises(ValueError, match="not a claim"):
        claim_targets([("red", "cat", None)])
    with pytest.raises(ValueError, match="not a claim"):
        claim_targets([("red", "circle", "huge")])


def test_claim_targets_of_every_training_caption_match_its_scene():
    """The targets come from the caption, and every caption is true of its scene: so the
    (colour, shape) targets are exactly the scene's objects."""
    from studio.ml.shapes import CLAIM_CLASSES, ShapesSource, claim_targets

    source = ShapesSource(seed=3)
    for i in range(200):
        sample = source.sample(i)
        targets, _ = claim_targets(sample.caption.objects)
        on = {CLAIM_CLASSES[k] for k in np.flatnonzero(targets[:32])}
        assert on == {f"{o.colour} {o.shape}" for o in sample.scene.objects}
