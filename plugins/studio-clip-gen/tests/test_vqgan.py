"""The VQGAN matches taming's module tree exactly and its quantiser behaves as taming's legacy mode."""

from __future__ import annotations

import pytest
import torch

from studio_clip_gen.vqgan import F16_1024, F16_16384, VQConfig, VQModel, VectorQuantizer, parameter_count


@pytest.mark.parametrize(
    "cfg, manifest_name, params",
    [(F16_16384, "vqgan_f16_16384_keys.txt", 76_073_859), (F16_1024, "vqgan_f16_1024_keys.txt", 72_141_699)],
)
def test_f16_state_dict_equals_taming_manifest(cfg, manifest_name, params, manifest):
    with torch.device("meta"):
        model = VQModel(cfg)
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert ours == manifest(manifest_name)  # names, shapes, dtypes and registration order
    assert len(ours) == 343
    assert parameter_count(model) == params


def test_taming_yaml_config():
    yaml_block = {"model": {"target": "taming.models.vqgan.VQModel", "params": {
        "embed_dim": 256, "n_embed": 16384, "lossconfig": {"target": "x"},
        "ddconfig": {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3,
                     "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16],
                     "dropout": 0.0}}}}
    assert VQConfig.from_taming_yaml(yaml_block) == F16_16384
    with pytest.raises(ValueError, match="not a taming VQGAN config"):
        VQConfig.from_taming_yaml({"model": {"params": {}}})


def test_quantizer_legacy_loss_straight_through_and_first_index_on_ties():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_embed=4, embed_dim=2, beta=0.25)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    z = torch.tensor([[0.9, 0.1], [0.1, 0.8]]).t().reshape(1, 2, 1, 2).clone().requires_grad_(True)
    q = vq(z)
    assert q.indices.tolist() == [[[0, 2]]]  # codes 0 and 1 tie: the first wins
    codes = vq.embedding.weight[[0, 2]].t().reshape(1, 2, 1, 2)
    mse = torch.mean((codes - z.detach()) ** 2)
    assert torch.allclose(q.loss, mse * 1.25)
    # legacy placement: beta scales the codebook term (gradient reaching the codes), not the commitment term
    grad_codes, grad_z = torch.autograd.grad(q.loss, [vq.embedding.weight, z], retain_graph=True)
    assert torch.allclose(grad_z, 2 * (z - codes).detach() / z.numel())
    assert torch.allclose(grad_codes[0], 0.25 * 2 * (codes - z).detach()[0, :, 0, 0] / z.numel())
    # straight-through: z_q's gradient reaches z unchanged
    (g,) = torch.autograd.grad(q.z_q.sum(), z)
    assert torch.equal(g, torch.ones_like(z))
    assert torch.equal(q.z_q, codes)


def test_decode_indices_matches_decode_of_quantized(tiny_vq_config):
    torch.manual_seed(0)
    model = VQModel(tiny_vq_config).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        q = model.encode(x)
        flat = model.encode_to_indices(x)
        assert flat.shape == (2, tiny_vq_config.grid ** 2)
        assert torch.equal(flat.view(2, 8, 8), q.indices)
        # row-major (b, h, w): token t sits at row t // w, column t % w
        assert flat[1, 8 * 3 + 5] == q.indices[1, 3, 5]
        expected = model.decode(q.z_q)
        assert torch.allclose(model.decode_indices(flat), expected, atol=1e-4)  # z_q is z + (codes - z): equal up to rounding
        assert torch.allclose(model.decode_indices(q.indices), expected, atol=1e-4)  # z_q is z + (codes - z): equal up to rounding
        rec, _ = model(x)
        assert rec.shape == x.shape


def test_config_rejects_widths_groupnorm_cannot_split():
    with pytest.raises(ValueError, match="norm_groups"):
        VQConfig(ch=24, ch_mult=(1,), resolution=16)


def test_centred_downsampling_keeps_a_code_over_the_middle_of_its_pixels():
    """A picture symmetric under a half turn, through a downsampling conv whose kernel is too,
    comes out symmetric only when the padding is centred: taming's right/bottom pad shifts it."""
    from studio_clip_gen.vqgan import Downsample

    torch.manual_seed(0)
    picture = torch.rand(1, 4, 16, 16)
    picture = picture + picture.flip(-1, -2)
    outputs = {}
    for padding in ("taming", "centred"):
        layer = Downsample(4, padding)
        with torch.no_grad():
            layer.conv.weight.copy_(layer.conv.weight + layer.conv.weight.flip(-1, -2))
            layer.conv.bias.zero_()
            outputs[padding] = layer(picture)
        assert outputs[padding].shape == (1, 4, 8, 8)  # same grid and parameters either way
    assert torch.allclose(outputs["centred"], outputs["centred"].flip(-1, -2), atol=1e-5)
    assert not torch.allclose(outputs["taming"], outputs["taming"].flip(-1, -2), atol=1e-3)


def test_the_padding_is_part_of_the_config_and_old_configs_read_as_taming():
    cfg = VQConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=16, z_channels=8,
                   embed_dim=8, n_embed=16, downsample_padding="centred")
    assert VQConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k != "downsample_padding"}
    assert VQConfig.from_dict(old).downsample_padding == "taming"
    with pytest.raises(ValueError, match="downsample_padding"):
        VQConfig(downsample_padding="left")
