"""Loading CLIP weights from local files: every format, and one-line errors for bad files."""

from __future__ import annotations

import pickle
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from studio.ml import clip_load  # noqa: E402
from studio.ml.clip_load import WeightsError  # noqa: E402

torch.set_num_threads(1)

ARCH = "tiny-test"


@pytest.fixture
def tiny(monkeypatch):
    """Register a tiny architecture with open_clip so it loads by name like the real ones."""
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS

    cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    monkeypatch.setitem(_MODEL_CONFIGS, ARCH, cfg)
    torch.manual_seed(0)
    return open_clip.create_model(ARCH, pretrained=None)


def assert_same_weights(loaded, ref):
    ref_state = ref.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, ref_state[key]), key


def test_plain_state_dict_with_module_prefix(tiny, tmp_path):
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny.state_dict().items()}}, path)
    model = clip_load.load_clip(ARCH, path)
    assert_same_weights(model, tiny)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_safetensors(tiny, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    assert_same_weights(clip_load.load_clip(ARCH, path), tiny)


def test_torchscript_archive_is_read_without_running_it(tiny, tmp_path):
    path = tmp_path / "openai.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(tiny).save(str(path))
    model = clip_load.load_clip(ARCH, path)
    assert_same_weights(model, tiny)


def test_fp16_weights_are_cast(tiny, tmp_path):
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in tiny.state_dict().items()}, path)
    model = clip_load.load_clip(ARCH, path)
    assert next(model.parameters()).dtype == torch.float32


def test_not_a_checkpoint(tiny, tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, I am a text file\n")
    with pytest.raises(WeightsError, match="notes.pt: not a checkpoint"):
        clip_load.load_clip(ARCH, path)


def test_truncated(tiny, tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(tiny.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.pt") as info:
        clip_load.load_clip(ARCH, path)
    assert "\n" not in str(info.value)
    safe = tmp_path / "cut.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(safe))
    safe.write_bytes(safe.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="cut.safetensors"):
        clip_load.load_clip(ARCH, safe)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_run(tiny, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny.state_dict(), "extra": _Payload(str(marker))}, path)
    with pytest.raises(WeightsError, match="pickle payload"):
        clip_load.load_clip(ARCH, path)
    assert not marker.exists()
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(WeightsError):
        clip_load.load_clip(ARCH, raw)
    assert not marker.exists()


def test_misfit_names_the_first_key(tiny, tmp_path):
    state = dict(tiny.state_dict())
    state["visual.conv1.weight"] = torch.zeros(64, 3, 4, 4)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"wrong.pt: does not fit CLIP tiny-test: key 'visual.conv1.weight' has shape"):
        clip_load.load_clip(ARCH, path)
    del state["visual.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(WeightsError, match="missing key 'visual.conv1.weight'"):
        clip_load.load_clip(ARCH, path)


def test_unknown_architecture(tmp_path):
    with pytest.raises(WeightsError, match="unknown CLIP architecture"):
        clip_load.load_clip("ViT-Q-99", tmp_path / "x.pt")
