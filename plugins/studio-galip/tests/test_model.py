"""The networks: official keys, shapes and parameter counts; scaling; the prompted CLIP trunk."""

from __future__ import annotations

import pytest
import torch
from galip_helpers import MANIFESTS, make_tiny_clip, make_tiny_nets

from studio_galip.model import (
    GalipConfig, build_nets, count_params, is_trunk_key, scaled_prompt_blocks, scaled_taps,
)


def read_manifest(name: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (MANIFESTS / f"{name}_keys.txt").read_text().splitlines():
        key, shape = line.split("\t")[:2]
        rows.append((key, tuple(int(x) for x in shape.strip("()").split(",") if x.strip())))
    return rows


@pytest.fixture(scope="module")
def official_meta():
    """The official networks around CLIP ViT-B/32, on the meta device (no memory, no time)."""
    import open_clip

    with torch.device("meta"):
        clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None, device="meta").requires_grad_(False)
        cfg = GalipConfig.for_clip(clip)
        return cfg, build_nets(cfg, clip)


def test_official_config_is_what_clip_vit_b32_implies(official_meta):
    cfg, _ = official_meta
    assert cfg == GalipConfig()
    assert cfg.block_sizes() == [8, 16, 32, 64, 128, 224]
    assert cfg.block_channels() == [(512, 512), (512, 512), (512, 512), (512, 256), (256, 128), (128, 64)]
    assert cfg.cond_total == 612


@pytest.mark.parametrize("name", ["netG", "netD", "netC"])
def test_state_dict_keys_and_shapes_equal_the_manifests(official_meta, name):
    _, nets = official_meta
    net = {"netG": nets.G, "netD": nets.D, "netC": nets.C}[name]
    ours = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    ref = read_manifest(name)
    assert dict(ours) == dict(ref)
    assert len(ours) == len(ref)
    # Same order too, except inside open_clip's blocks (it registers ln_1 before attn).
    assert [k for k, _ in ours if not is_trunk_key(k)] == [k for k, _ in ref if not is_trunk_key(k)]


def test_parameter_counts_of_the_spec(official_meta):
    _, nets = official_meta
    assert count_params(nets.G) == 139_284_675
    assert count_params(nets.G, learnable_only=True) == 51_830_211
    assert count_params(nets.D) == 28_706_821
    assert count_params(nets.C) == 2_099_200


def test_taps_and_prompt_blocks_scale_with_depth():
    assert scaled_taps(12) == (1, 4, 8) and scaled_prompt_blocks(12) == tuple(range(1, 9))
    assert scaled_taps(24) == (2, 8, 16) and scaled_prompt_blocks(24) == tuple(range(2, 17))
    assert scaled_taps(4) == (0, 1, 3) and scaled_prompt_blocks(4) == (1, 2, 3)
    assert scaled_taps(3) == (0, 1, 2)


def test_config_round_trips_and_rejects_nonsense():
    cfg = GalipConfig(cond_scale="sqrt_dim", ngf=16)
    assert GalipConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        GalipConfig(cond_scale="loud")
    with pytest.raises(ValueError):
        GalipConfig(taps=(1, 12))
    with pytest.raises(ValueError):
        GalipConfig.from_dict({"bogus": 1})


def test_small_networks_shapes(tiny_nets):
    cfg = tiny_nets.cfg
    assert (cfg.grid, cfg.clip_width, cfg.clip_depth, cfg.taps) == (6, 64, 3, (0, 1, 2))
    img = tiny_nets.G(torch.randn(2, cfg.nz), torch.randn(2, cfg.cond_dim))
    assert img.shape == (2, 3, 48, 48)
    feats = torch.randn(2, len(cfg.taps), cfg.clip_width, cfg.grid, cfg.grid)
    out = tiny_nets.D(feats)
    assert out.shape == (2, cfg.d_ch, cfg.grid, cfg.grid)
    assert tiny_nets.C(out, torch.randn(2, cfg.cond_dim)).shape == (2, 1, 1, 1)


def test_trunk_is_shared_frozen_and_stays_in_eval(tiny_nets):
    trunk = tiny_nets.G.mapping.CLIP_ViT
    assert trunk.transformer is tiny_nets.clip.visual.transformer
    assert not any(p.requires_grad for p in trunk.parameters())
    tiny_nets.G.train()
    assert not trunk.training and tiny_nets.G.fc_code.training


def official_trunk_reference(visual, fmap, prompts, prompt_blocks):
    """The official CLIP_Mapper forward, written sequence-first as in OpenAI's code."""
    b, c, g, _ = fmap.shape
    x = fmap.reshape(b, c, -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(b, 1, c), x], dim=1)
    x = visual.ln_pre(x + visual.positional_embedding).permute(1, 0, 2)  # LND
    k = 0
    for i, block in enumerate(visual.transformer.resblocks):
        if i in prompt_blocks:
            x = torch.cat((x, prompts[:, k, :].unsqueeze(0)), dim=0)
            k += 1
            x = block(x.permute(1, 0, 2)).permute(1, 0, 2)[:-1]
        else:
            x = block(x.permute(1, 0, 2)).permute(1, 0, 2)
    return x[1:].permute(1, 2, 0).reshape(-1, c, g, g)


def test_prompted_trunk_matches_the_official_algorithm():
    clip = make_tiny_clip()
    nets = make_tiny_nets(clip)
    cfg = nets.cfg
    fmap = torch.randn(2, cfg.clip_width, cfg.grid, cfg.grid)
    prompts = torch.randn(2, len(cfg.prompt_blocks), cfg.clip_width)
    ours = nets.G.mapping.CLIP_ViT(fmap, prompts)
    ref = official_trunk_reference(clip.visual, fmap, prompts, cfg.prompt_blocks)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # The prompts matter (they are attended to, then dropped).
    assert not torch.allclose(ours, nets.G.mapping.CLIP_ViT(fmap, prompts * 0))


def test_official_size_forward_on_real_tensors():
    """One pass through the full-size networks: 224x224 images, one logit per image."""
    import open_clip

    from studio.ml.clip_features import image_features, to_clip_input

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval().requires_grad_(False)
    nets = build_nets(GalipConfig(), clip)
    with torch.no_grad():
        img = nets.G(torch.randn(1, 100), torch.randn(1, 512))
        assert img.shape == (1, 3, 224, 224) and torch.isfinite(img).all()
        feats, emb = image_features(clip, to_clip_input(img.clamp(-1, 1), clip), nets.cfg.taps)
        assert feats.shape == (1, 3, 768, 7, 7) and emb.shape == (1, 512)
        assert nets.C(nets.D(feats), emb).shape == (1, 1, 1, 1)
