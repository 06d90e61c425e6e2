"""Lightning and clip-gen checkpoints load safely and strictly; bad files fail in one line."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict

import pytest
import torch

from studio_clip_gen import checkpoints
from studio_clip_gen.checkpoints import WeightsError, clipgen_to_taming, load_vqgan, taming_to_clipgen
from studio_clip_gen.vqgan import F16_16384, AttnBlock, VQModel

CALLS: list[str] = []


def _never_call(*args):
    CALLS.append("payload ran")
    return "pwned"


class ModelCheckpoint:
    """A stand-in for Lightning's callback, pickled into checkpoints by instance and by class."""

    def __init__(self):
        self.best_model_path = "/logs/last.ckpt"
        self.best_model_score = torch.tensor(0.5)

    def __setstate__(self, state):
        CALLS.append("setstate ran")
        self.__dict__.update(state)


class Payload:
    def __reduce__(self):
        return (_never_call, ("echo hi",))


class AttributeDict(dict):
    """Like Lightning's hyper-parameter dict: a dict subclass, which torch's unpickler will not fill."""


def _lightning_checkpoint(model: VQModel, manifest, extra=None) -> dict:
    state = OrderedDict()
    loss_rows = manifest("vqgan_loss_keys.txt")[:55]  # LPIPS + the n_layers=3 discriminator
    for key, value in model.state_dict().items():
        if key.startswith("quantize."):  # Lightning order: loss.* sits between decoder.* and quantize.*
            for name, shape, _ in loss_rows:
                if name not in state:
                    state[name] = torch.zeros(shape, dtype=torch.int64 if name.endswith("num_batches_tracked") else torch.float32)
        state[key] = value
    ckpt = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(1.0)}, "instance": ModelCheckpoint()},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 4.5e-6, "params": [0]}]}],
        "lr_schedulers": [],
        "state_dict": state,
        "payload": Payload(),
    }
    ckpt.update(extra or {})
    return ckpt


def _save_with_foreign_module(obj, path):
    """Pickle classes of this test under a module name that does not exist when loading."""
    fake = types.ModuleType("pytorch_lightning_fake.callbacks")
    originals = {}
    for thing in (ModelCheckpoint, Payload, AttributeDict, _never_call):
        originals[thing] = thing.__module__
        thing.__module__ = fake.__name__
        setattr(fake, thing.__qualname__, thing)
    parent = types.ModuleType("pytorch_lightning_fake")
    parent.callbacks = fake
    sys.modules.update({parent.__name__: parent, fake.__name__: fake})
    try:
        torch.save(obj, path)
    finally:
        del sys.modules[fake.__name__], sys.modules[parent.__name__]
        for thing, module in originals.items():
            thing.__module__ = module


@pytest.mark.parametrize("hparams", [None, AttributeDict(lr=1e-4, embed_dim=8)], ids=["plain", "dict-subclass"])
def test_lightning_checkpoint_loads_strictly_without_running_anything(tmp_path, tiny_vq_config, manifest, hparams, monkeypatch):
    torch.manual_seed(0)
    model = VQModel(tiny_vq_config)
    path = tmp_path / "last.ckpt"
    extra = {} if hparams is None else {"hyper_parameters": hparams}
    _save_with_foreign_module(_lightning_checkpoint(model, manifest, extra), path)
    CALLS.clear()
    fallbacks = []
    restricted = checkpoints._load_restricted
    monkeypatch.setattr(checkpoints, "_load_restricted", lambda p: fallbacks.append(p) or restricted(p))

    raw = checkpoints.read_checkpoint(path)
    # torch's weights-only unpickler reads it, unless a dict-like placeholder must be filled
    assert len(fallbacks) == (0 if hparams is None else 1)
    if hparams is not None:
        assert raw["hyper_parameters"].items == {"lr": 1e-4, "embed_dim": 8}
    assert CALLS == []  # neither the payload nor __setstate__ ran
    assert "pytorch_lightning_fake" not in sys.modules and "pytorch_lightning_fake.callbacks" not in sys.modules
    callback = raw["callbacks"]["instance"]
    assert isinstance(callback, checkpoints.Placeholder)
    assert callback.fqn == "pytorch_lightning_fake.callbacks.ModelCheckpoint"
    assert callback.state["best_model_path"] == "/logs/last.ckpt"  # kept as inert data
    assert isinstance(raw["payload"], checkpoints.Placeholder)

    loaded = load_vqgan(path, tiny_vq_config)  # drops loss.*, strict load
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_clipgen_rekey_matches_the_reference_manifests(manifest):
    """Re-key the real f16 layouts (meta tensors) both ways and compare with both manifests."""
    clipgen = {k: torch.empty(s, device="meta") for k, s, _ in manifest("clipgen_vqgan_16384_keys.txt")}
    taming_rows = manifest("vqgan_f16_16384_keys.txt")
    taming = clipgen_to_taming(clipgen, F16_16384)
    assert sorted((k, list(v.shape)) for k, v in taming.items()) == sorted((k, s) for k, s, _ in taming_rows)
    back = taming_to_clipgen(taming, F16_16384)
    without_disc = {k: list(v.shape) for k, v in clipgen.items() if not k.startswith("discriminator.")}
    assert {k: list(v.shape) for k, v in back.items()} == without_disc


def test_clipgen_round_trip_and_attention_equivalence(tiny_vq_config):
    torch.manual_seed(0)
    state = VQModel(tiny_vq_config).state_dict()
    back = clipgen_to_taming(taming_to_clipgen(state, tiny_vq_config), tiny_vq_config)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)

    # one-head nn.MultiheadAttention with the mapped weights computes exactly taming's AttnBlock
    c = 32
    attn = AttnBlock(c, tiny_vq_config).eval()
    mha = torch.nn.MultiheadAttention(c, 1, batch_first=True).eval()
    cg = taming_to_clipgen({f"encoder.mid.attn_1.{k}": v for k, v in attn.state_dict().items()} | {
        k: v for k, v in state.items() if not k.startswith("encoder.mid.attn_1.")}, tiny_vq_config)
    mha.load_state_dict({k.removeprefix("encoder.mid.1.attn."): v for k, v in cg.items() if k.startswith("encoder.mid.1.attn.")})
    x = torch.randn(2, c, 4, 4)
    h = attn.norm(x).flatten(2).transpose(1, 2)
    expected = x + mha(h, h, h, need_weights=False)[0].transpose(1, 2).reshape(x.shape)
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_clipgen_checkpoint_loads_with_its_eps(tmp_path, tiny_vq_config):
    torch.manual_seed(1)
    state = VQModel(tiny_vq_config).state_dict()
    disc = {"discriminator.head.weight": torch.zeros(1, 8, 4, 4)}
    path = tmp_path / "vqgan_coco.pt"
    torch.save({"model": taming_to_clipgen(state, tiny_vq_config) | disc, "epoch": 1}, path)
    model = load_vqgan(path, tiny_vq_config)
    assert model.config.eps == 1e-5 and model.config.beta == 0.2
    assert model.encoder.norm_out.eps == 1e-5
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_bad_files_fail_in_one_line(tmp_path, tiny_vq_config):
    torch.manual_seed(0)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": VQModel(tiny_vq_config).state_dict()}, good)
    data = good.read_bytes()

    cases = {}
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    cases["truncated.ckpt"] = "truncated"
    (tmp_path / "text.ckpt").write_text("definitely not a checkpoint\n" * 10)
    cases["text.ckpt"] = "not a readable PyTorch checkpoint"
    (tmp_path / "empty.ckpt").write_bytes(b"")
    cases["empty.ckpt"] = "empty or truncated"
    torch.save({"state_dict": {"hello": "world"}}, tmp_path / "nontensor.ckpt")
    cases["nontensor.ckpt"] = "not a tensor"
    wrong = VQModel(tiny_vq_config).state_dict()
    wrong["decoder.conv_out.weight"] = torch.zeros(3, 32, 1, 1)
    torch.save({"state_dict": wrong}, tmp_path / "shape.ckpt")
    cases["shape.ckpt"] = "'decoder.conv_out.weight' has shape [3, 32, 1, 1], expected [3, 32, 3, 3]"
    missing = VQModel(tiny_vq_config).state_dict()
    del missing["encoder.mid.attn_1.q.bias"]
    torch.save({"state_dict": missing}, tmp_path / "missing.ckpt")
    cases["missing.ckpt"] = "missing key 'encoder.mid.attn_1.q.bias'"
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    cases["bad.safetensors"] = "not a readable safetensors file"
    cases["absent.ckpt"] = "no such file"

    for name, needle in cases.items():
        with pytest.raises(WeightsError) as info:
            load_vqgan(tmp_path / name, tiny_vq_config)
        message = str(info.value)
        assert needle in message, (name, message)
        assert "\n" not in message and name in message


def test_refuses_blocked_modules(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Evil()}, path)
    with pytest.raises(WeightsError, match="refused"):
        checkpoints.read_checkpoint(path)


def test_safetensors_with_meta_round_trip(tmp_path, tiny_vq_config):
    model = VQModel(tiny_vq_config)
    path = checkpoints.write_safetensors(tmp_path / "vq.safetensors", model.state_dict(), {"vqgan": tiny_vq_config.to_dict()})
    loaded = load_vqgan(path)  # the config comes from the file
    assert loaded.config == tiny_vq_config
    assert not list(tmp_path.glob("*.tmp"))


def test_legacy_non_zip_checkpoints_load_through_the_restricted_unpickler(tmp_path, tiny_vq_config):
    torch.manual_seed(2)
    state = VQModel(tiny_vq_config).state_dict()
    path = tmp_path / "legacy.ckpt"
    obj = {"state_dict": state, "callbacks": {"x": ModelCheckpoint()}, "payload": Payload()}
    fake = types.ModuleType("legacy_fake")
    originals = {c: c.__module__ for c in (ModelCheckpoint, Payload, _never_call)}
    for c in originals:
        c.__module__ = "legacy_fake"
        setattr(fake, c.__qualname__, c)
    sys.modules["legacy_fake"] = fake
    try:
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    finally:
        del sys.modules["legacy_fake"]
        for c, m in originals.items():
            c.__module__ = m
    CALLS.clear()
    raw = checkpoints.read_checkpoint(path)
    assert CALLS == [] and isinstance(raw["payload"], checkpoints.Placeholder)
    loaded = load_vqgan(path, tiny_vq_config)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_networks_built_without_random_init_then_loaded_compute_what_the_originals_do(tiny_vq_config):
    """Nothing a constructor computes from torch.nn.init survives the strict load (no such buffers)."""
    from studio.api import without_random_init
    from studio_clip_gen.gpt import GPT, GPTConfig
    from studio_clip_gen.vqgan import VQModel

    torch.manual_seed(0)
    gpt_cfg = GPTConfig(n_codes=16, grid=4, width=32, n_layers=2, n_heads=2, clip_dim=8, null_condition=True)
    for build, run in ((lambda: VQModel(tiny_vq_config), lambda m: m(torch.rand(2, 3, 16, 16) * 2 - 1)[0]),
                       (lambda: GPT(gpt_cfg), lambda m: m(torch.randn(2, 8), torch.randint(16, (2, 5))))):
        original = build().eval()
        with without_random_init():
            rebuilt = build().eval()
        rebuilt.load_state_dict(original.state_dict(), strict=True)
        torch.manual_seed(1)
        expected = run(original)
        torch.manual_seed(1)
        assert torch.equal(run(rebuilt), expected)
