"""The feature helpers against open_clip's own forward, on random-weight models."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from studio.ml import clip_features as cf  # noqa: E402

torch.set_num_threads(1)

PROMPTS = ["a red circle", "a small yellow triangle on a dark background", "x " * 100]


def tiny_clip():
    """A small open_clip CLIP built from config dicts (grid 4, three vision blocks)."""
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "patch_size": 8, "width": 64, "layers": 3, "head_width": 32},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        quick_gelu=True,
    )
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def vitb32():
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip()


@pytest.fixture(params=["tiny", "vitb32"])
def model(request):
    return request.getfixturevalue(request.param)


def test_sentence_embedding_is_encode_text_unnormalised(model):
    tokens = cf.tokenize_for(model, PROMPTS)
    ours = cf.sentence_embedding(model, tokens)
    ref = model.encode_text(tokens)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours.norm(dim=-1), torch.ones(len(PROMPTS)))


def test_text_embedding_is_normalised_encode_text(model):
    tokens = cf.tokenize_for(model, PROMPTS[:2])
    torch.testing.assert_close(cf.text_embedding(model, tokens), model.encode_text(tokens, normalize=True),
                               rtol=1e-5, atol=1e-5)


def test_image_features_match_encode_image_and_intermediates(model):
    size = cf.clip_image_size(model)
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    pixels = cf.to_clip_input(images, model)
    depth = len(model.visual.transformer.resblocks)
    taps = [1, depth - 1]
    maps, pooled = cf.image_features(model, pixels, taps)
    torch.testing.assert_close(pooled, model.encode_image(pixels), rtol=1e-5, atol=1e-5)
    grid = size // model.visual.patch_size[0]
    width = model.visual.conv1.out_channels
    assert maps.shape == (2, len(taps), width, grid, grid)
    ref = model.visual.forward_intermediates(pixels, indices=taps, intermediates_only=True)["image_intermediates"]
    for i in range(len(taps)):
        torch.testing.assert_close(maps[:, i], ref[i], rtol=1e-5, atol=1e-5)


def test_galip_mapping_shows_clip_a_quarter_of_the_signal(tiny):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor(cf.OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cf.OPENAI_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(cf.to_clip_input(images, tiny, "galip"), (0.75 + 0.25 * images - mean) / std)
    torch.testing.assert_close(cf.to_clip_input(images, tiny, "clean"), ((images + 1) / 2 - mean) / std)


def test_galip_mapping_resizes_nearest(tiny):
    images = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 3, 1, 1) / 16
    out = cf.to_clip_input(images, tiny, "galip")
    assert out.shape == (1, 3, 32, 32)
    # Nearest: each source pixel becomes an 8x8 block of one value.
    assert torch.equal(out[0, 0, :8, :8], out[0, 0, 0, 0].expand(8, 8))
    with pytest.raises(ValueError):
        cf.to_clip_input(images, tiny, "bicubic-please")


def test_long_prompts_are_cut_with_end_of_text_last():
    tokens = cf.tokenize("word " * 200, context_length=77)
    assert tokens.shape == (1, 77)
    assert tokens[0].argmax().item() == 76  # the EOT id is the largest id, forced into the last slot


def test_clip_score_is_a_cosine(tiny):
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    score = cf.clip_score(tiny, images, cf.tokenize_for(tiny, PROMPTS))
    assert score.shape == (3,) and bool((score.abs() <= 1 + 1e-6).all())


def test_average_pooled_clips_match_encode_image():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32, "pool_type": "avg"},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        quick_gelu=True,
    ).eval()
    pixels = torch.randn(2, 3, 32, 32)
    _, pooled = cf.image_features(model, pixels, [1])
    torch.testing.assert_close(pooled, model.encode_image(pixels), rtol=1e-5, atol=1e-5)
