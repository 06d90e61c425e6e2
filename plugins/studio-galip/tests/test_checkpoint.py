"""Official checkpoints and Studio weights: strict loads, identical outputs, one-line errors."""

from __future__ import annotations

import pickle

import pytest
import torch
from galip_helpers import TINY_ARCH, make_tiny_clip, make_tiny_nets, save_clip, save_official_checkpoint

from studio.ml.clip_load import WeightsError, load_clip
from studio_galip.checkpoints import (
    check_clip_fits, load_into, read_official, read_studio, read_weights, save_studio, sha256_file,
)
from studio_galip.model import GalipConfig, build_nets


def round_trunk_to_fp16(nets):
    """What a GPU-trained official checkpoint holds: the CLIP trunk in fp16."""
    with torch.no_grad():
        for p in nets.G.mapping.CLIP_ViT.parameters():
            p.copy_(p.half().float())


def outputs(nets):
    gen = torch.Generator().manual_seed(0)
    noise, sent = torch.randn(2, nets.cfg.nz, generator=gen), torch.randn(2, nets.cfg.cond_dim, generator=gen)
    feats = torch.randn(2, len(nets.cfg.taps), nets.cfg.clip_width, nets.cfg.grid, nets.cfg.grid, generator=gen)
    nets.G.eval()
    with torch.no_grad():
        return nets.G(noise, sent), nets.C(nets.D(feats), sent)


def test_official_layout_loads_strictly_with_identical_outputs(tmp_path):
    source = make_tiny_nets(make_tiny_clip(seed=0), seed=3)
    round_trunk_to_fp16(source)
    path = tmp_path / "pre_coco.pth"
    save_official_checkpoint(path, source)
    state = torch.load(path, weights_only=True)["model"]["netG"]
    assert next(iter(state)).startswith("module.") and state["module.mapping.CLIP_ViT.conv1.weight"].dtype == torch.float16

    weights = read_official(path)
    assert weights.config is None and weights.extra["epoch"] == 3
    assert all(v.dtype == torch.float32 for s in weights.states.values() for v in s.values())
    target = build_nets(source.cfg, make_tiny_clip(seed=9))  # another CLIP trunk: the checkpoint's wins
    load_into(target, weights, path)
    for ours, ref in zip(outputs(target), outputs(source)):
        assert torch.equal(ours, ref)


def test_studio_format_round_trip(tmp_path):
    clip = make_tiny_clip()
    source = make_tiny_nets(clip, seed=4, cond_scale="sqrt_dim")
    path = tmp_path / "galip.safetensors"
    digest = save_studio(path, source, meta={"steps": 12}, include_d=True)
    assert digest == sha256_file(path) and len(digest) == 64
    weights = read_studio(path)
    assert weights.config == source.cfg and weights.meta == {"steps": 12}
    assert not any(k.startswith("mapping.CLIP_ViT.") for k in weights.states["netG"])  # the trunk is the CLIP's
    target = build_nets(weights.config, clip)
    load_into(target, weights, path)
    for ours, ref in zip(outputs(target), outputs(source)):
        assert torch.equal(ours, ref)
    assert read_weights(path).config == source.cfg


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not weights\n")
    with pytest.raises(WeightsError, match="notes.pth: not a checkpoint"):
        read_official(path)
    plain = tmp_path / "plain.pth"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(WeightsError, match="not a GALIP checkpoint"):
        read_official(plain)


def test_truncated(tmp_path, tiny_nets):
    path = tmp_path / "cut.pth"
    save_official_checkpoint(path, tiny_nets)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="cut.pth: not a checkpoint or truncated") as info:
        read_official(path)
    assert "\n" not in str(info.value)
    safe = tmp_path / "cut.safetensors"
    save_studio(safe, tiny_nets)
    safe.write_bytes(safe.read_bytes()[:3000])
    with pytest.raises(WeightsError, match="cut.safetensors"):
        read_studio(safe)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_executed(tmp_path, tiny_nets):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"netG": tiny_nets.G.state_dict()}, "epoch": Payload(str(marker))}, path)
    with pytest.raises(WeightsError, match="pickle payload"):
        read_official(path)
    raw = tmp_path / "evil_raw.pth"
    raw.write_bytes(pickle.dumps({"model": Payload(str(marker))}))
    with pytest.raises(WeightsError):
        read_official(raw)
    assert not marker.exists()


def test_wrong_shape_and_missing_keys_are_named(tmp_path, tiny_nets):
    path = tmp_path / "other.pth"
    save_official_checkpoint(path, make_tiny_nets(ngf=4))
    with pytest.raises(WeightsError, match=r"other.pth: netG does not fit: key 'mapping.conv.weight' has shape"):
        load_into(tiny_nets, read_official(path), path)
    weights = read_official(path)
    del weights.states["netG"]["fc_code.weight"]
    with pytest.raises(WeightsError, match="missing key 'fc_code.weight'"):
        load_into(make_tiny_nets(ngf=4), weights, path)
    weights = read_official(path)
    weights.states["netD"]["bogus"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="netD does not fit: unexpected key 'bogus'"):
        load_into(make_tiny_nets(ngf=4), weights, path)


def test_clip_must_fit_the_generator(tmp_path, tiny_nets):
    clip_file = save_clip(tmp_path / "clip.pt", make_tiny_clip())
    clip = load_clip(TINY_ARCH, clip_file)
    check_clip_fits(tiny_nets.cfg, clip, TINY_ARCH)
    with pytest.raises(WeightsError, match="CLIP tiny does not fit these GALIP weights: clip_width is 64, expected 768"):
        check_clip_fits(GalipConfig(), clip, "tiny")


def test_official_config_is_inferred_from_shapes():
    import open_clip

    from studio_galip.checkpoints import GalipWeights, infer_config

    with torch.device("meta"):
        clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None, device="meta")
        nets = build_nets(GalipConfig(), clip)
    weights = GalipWeights({"netG": nets.G.state_dict(), "netD": nets.D.state_dict(), "netC": nets.C.state_dict()})
    assert infer_config(weights, clip) == GalipConfig()
    small = make_tiny_nets(ngf=4, mid_ch=4)
    weights = GalipWeights({"netG": small.G.state_dict(), "netD": small.D.state_dict(), "netC": small.C.state_dict()})
    assert infer_config(weights, small.clip) == small.cfg
