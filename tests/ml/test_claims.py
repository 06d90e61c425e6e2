"""The claims classifier used to re-rank `shapes` candidates, and the grammar parser it needs."""

from __future__ import annotations

import pytest
import torch

from studio.ml import shapes
from studio.ml.claims import (
    ClaimsNet, caption_targets, claim_score, load_claims_net, save_claims_net, training_loss,
)
from studio.ml.datasets import ShapesDataset


def test_every_caption_of_the_grammar_parses_back_to_itself():
    source = shapes.ShapesSource(seed=5)
    for i in range(300):
        for caption in shapes.captions(source.scene(i)):
            assert shapes.parse_caption(caption.text) == caption
            assert shapes.parse_caption(f"  {caption.text.upper()}. ") == caption


@pytest.mark.parametrize("text", ["a cat", "a red circle and a cat", "a red cat", "a huge red circle",
                                  "a red circle left of a small blue square", "an red circle",
                                  "a red circle on a grey background", ""])
def test_text_outside_the_grammar_does_not_parse(text):
    assert shapes.parse_caption(text) is None


def test_claim_score_prefers_the_picture_that_holds_what_the_caption_names():
    caption = shapes.parse_caption("a red circle above a blue square")
    targets, mask = caption_targets(caption)
    right = torch.where(targets > 0, 5.0, -5.0)
    wrong_shape = right.clone()
    index = shapes.CLAIM_INDEX
    wrong_shape[index["blue square"]], wrong_shape[index["blue diamond"]] = -5.0, 5.0
    sizes_only = right.clone()
    sizes_only[index["red small"]] = 5.0  # sizes are not asked: not counted
    scores = claim_score(torch.stack([right, wrong_shape, sizes_only]), targets, mask)
    assert scores[0] > scores[1] and scores[0] == pytest.approx(scores[2].item())


def test_the_classifier_file_round_trips_and_other_files_are_refused(tmp_path):
    net = ClaimsNet(image_size=32, ch=8)
    path = tmp_path / "claims.safetensors"
    save_claims_net(net, path, {"steps": 3})
    loaded = load_claims_net(path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(net.eval()(x), loaded(x))
    from studio.plumbing import save_safetensors

    save_safetensors(tmp_path / "other.safetensors", {"w": torch.zeros(2)}, {"format": "something-else"})
    with pytest.raises(ValueError, match="not a claims classifier"):
        load_claims_net(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_claims_net(tmp_path / "junk.safetensors")
    save_claims_net(ClaimsNet(image_size=32, ch=16), tmp_path / "wider.safetensors")
    data = (tmp_path / "wider.safetensors").read_bytes().replace(b'"ch":"16"', b'"ch":"32"')
    (tmp_path / "wider.safetensors").write_bytes(data)  # the header no longer fits the tensors
    with pytest.raises(ValueError, match="wider.safetensors"):
        load_claims_net(tmp_path / "wider.safetensors")


def test_a_briefly_trained_classifier_reads_the_colour_off_held_out_drawings():
    """Trained for a few hundred steps on one-object drawings at 32 px (with the training loss
    that weights the rare positive entries up), the colour of its top (colour, shape) pair is the
    held-out drawing's colour well above the 1-in-8 of a guess."""
    torch.manual_seed(0)
    train = ShapesDataset(size=32, split="train", two_object_share=0.0)
    held = ShapesDataset(size=32, split="eval", two_object_share=0.0)

    def batch(data, indices):
        items = [data[i] for i in indices]
        images = torch.stack([it["image"] for it in items])
        objects = [it["attrs"]["objects"][0] for it in items]
        targets = torch.stack([caption_targets(shapes.make_caption([(o["colour"], o["shape"], None)]))[0]
                               for o in objects])
        return images, targets

    net = ClaimsNet(image_size=32, ch=32)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = [batch(train, range(k * 32, k * 32 + 32)) for k in range(150)]
    for images, targets in batches + batches:
        loss = training_loss(net(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    images, targets = batch(held, range(128))
    with torch.no_grad():
        pairs = net.eval()(images)[:, :32].view(-1, len(shapes.COLOURS), len(shapes.SHAPES))
    asked = targets[:, :32].view(-1, len(shapes.COLOURS), len(shapes.SHAPES))
    colour_right = (pairs.amax(dim=2).argmax(dim=1) == asked.amax(dim=2).argmax(dim=1)).float().mean().item()
    assert colour_right > 0.3  # measured 0.48; a guess: 0.125


def test_relation_loglik_reads_where_each_object_is_on_the_maps():
    from studio.ml.claims import relation_loglik

    index = shapes.CLAIM_INDEX
    maps = torch.full((1, len(shapes.CLAIM_CLASSES), 8, 8), -5.0)
    maps[0, index["red circle"], 1, 6] = 10.0  # top right
    maps[0, index["blue square"], 6, 1] = 10.0  # bottom left
    def ll(text):
        return relation_loglik(maps, shapes.parse_caption(text)).item()

    assert ll("a red circle above a blue square") > -0.05 and ll("a red circle right of a blue square") > -0.05
    assert ll("a red circle below a blue square") < -3 and ll("a blue square right of a red circle") < -3
    assert ll("a red circle") == 0.0
