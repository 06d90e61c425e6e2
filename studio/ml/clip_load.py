"""Load an open_clip model by architecture name with weights from a local file.

Supported files, all read without running code from the file:

* safetensors;
* a plain ``torch.save`` state dict (optionally wrapped in ``{"state_dict": ...}`` or
  ``{"model": ...}``, optionally with ``module.`` prefixes), read with ``weights_only=True``;
* an OpenAI TorchScript archive (the ``ViT-B-32.pt`` style zip). ``torch.load`` refuses these
  with ``weights_only=True`` and ``torch.jit.load`` would compile and run the archive's code, so
  the tensors are read from its ``data.pkl`` with a restricted unpickler that only rebuilds
  tensors and records module attributes.

Every failure (not a checkpoint, truncated, pickle payload, keys or shapes that do not fit the
architecture) is a :class:`WeightsError` with a one-line message that names the file, the
expected architecture and, for a misfit, the first key that does not fit.
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from studio.errors import WeightsError
from studio.plumbing import check_finite, load_checkpoint, one_line

#: Keys that OpenAI archives carry as metadata next to the weights.
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")




# ---- reading files ------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` dict from any supported file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    elif zipfile.is_zipfile(path) and _is_torchscript_archive(path):
        state = _read_torchscript_archive(path)
    else:
        state = _read_torch_pickle(path)
    check_finite(state, path)
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({one_line(exc, 200)})") from None


def _read_torch_pickle(path: Path) -> dict[str, torch.Tensor]:
    return unwrap_state_dict(load_checkpoint(path), path)


def unwrap_state_dict(obj: Any, path: str | Path = "<memory>") -> dict[str, torch.Tensor]:
    """Find the state dict inside common checkpoint wrappers and strip ``module.`` prefixes."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict) and _is_flat_tensor_dict(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not _is_flat_tensor_dict(obj):
        raise WeightsError(f"{path}: not a state dict (found {type(obj).__name__} without tensors)")
    return strip_prefix({k: v for k, v in obj.items() if k not in _OPENAI_META_KEYS}, "module.")


def _is_flat_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) for k in obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove a leading ``prefix`` (e.g. ``module.`` from DataParallel) from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


# ---- TorchScript archives without running their code ---------------------------------------------


def _is_torchscript_archive(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("/constants.pkl") or name.endswith("/code/") or "/code/__torch__" in name
                   for name in zf.namelist())


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stand-in for a TorchScript class instance: it only keeps the attributes it was given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    flat = storage
    return torch.as_strided(flat, tuple(size), tuple(stride), offset).clone()


#: TorchScript wraps lists and typed values in these helpers; each returns its argument.
_JIT_LIST_BUILDERS = {
    name: (lambda value, *_type: value)
    for name in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "build_strlist",
                 "restore_type_tag")
}


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: tensors and plain containers, nothing else."""

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix = zf, prefix

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if (module, name) in {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}:
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name in _JIT_LIST_BUILDERS:
            return _JIT_LIST_BUILDERS[name]
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage" or storage_type not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported storage {pid!r}")
        dtype = _STORAGE_DTYPES[storage_type]
        raw = self.zf.read(f"{self.prefix}data/{key}")
        tensor = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return tensor[:numel]


def _read_torchscript_archive(path: Path) -> dict[str, torch.Tensor]:
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next(n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1)
            prefix = pkl[: -len("data.pkl")]
            root = _ArchiveUnpickler(zf.read(pkl), zf, prefix).load()
    except StopIteration:
        raise WeightsError(f"{path}: TorchScript archive without data.pkl") from None
    except Exception as exc:  # arbitrary bytes fail in many ways; none of them runs code
        raise WeightsError(f"{path}: unreadable TorchScript archive ({one_line(exc, 200)})") from None
    state: dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", state)
    if not state:
        raise WeightsError(f"{path}: TorchScript archive holds no tensors")
    # Plain tensor attributes are not weights: OpenAI keeps its causal mask as ``attn_mask``.
    return {k: v for k, v in state.items() if k not in _OPENAI_META_KEYS and not k.endswith("attn_mask")}


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Walk the attribute tree of script objects; tensors found become dotted state-dict keys."""
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, _ScriptObject):
        _collect_tensors(obj.state, prefix, out)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str) and not key.startswith("_") and key != "training":
                _collect_tensors(value, f"{prefix}{key}.", out)


# ---- building models ---------------------------------------------------------------------------


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp32 on CPU (parity is defined there), fp16 on CUDA as the official code runs CLIP."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def create_clip(arch: str) -> torch.nn.Module:
    """An open_clip model of architecture ``arch`` with random weights (no download)."""
    import open_clip

    if arch not in open_clip.list_models():
        _register_studio_configs()
    if arch not in open_clip.list_models():
        raise WeightsError(f"unknown CLIP architecture {arch!r} (see open_clip.list_models())")
    with _without_random_init_warning():
        return open_clip.create_model(arch, pretrained=None)


class _without_random_init_warning(logging.Filter):
    """open_clip warns that a model without ``pretrained`` is random; ours get weights next."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    def __enter__(self):
        logging.getLogger().addFilter(self)
        for handler in logging.getLogger().handlers:
            handler.addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeFilter(self)
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self)


def first_misfit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """Describe the first key of ``state`` that does not fit ``expected`` (None when all fit)."""
    for key, value in expected.items():
        if key not in state:
            return f"missing key {key!r}"
        if tuple(state[key].shape) != tuple(value.shape):
            return f"key {key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
    extra = next((k for k in state if k not in expected), None)
    return None if extra is None else f"unexpected key {extra!r}"


def _register_studio_configs() -> None:
    """Make Studio's small CLIP configs (``studio-tiny-64``, ...) loadable by name too."""
    try:
        from studio.ml import clip_configs
    except ImportError:
        return
    clip_configs.register_configs()


def check_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, arch: str) -> None:
    """Raise :class:`WeightsError` naming the first key that is missing, extra or mis-shaped."""
    problem = first_misfit(model.state_dict(), state)
    if problem:
        raise WeightsError(f"{path}: does not fit CLIP {arch}: {problem}")


def freeze(model: torch.nn.Module, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Eval mode, no gradients, moved to ``device`` in ``dtype`` (default: :func:`default_dtype`)."""
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype or default_dtype(device))


def load_clip(arch: str, path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """An open_clip model ``arch`` with the weights of ``path``: frozen, eval, on ``device``."""
    from studio.ml.skip_init import without_random_init

    with without_random_init():  # the strict load below sets every weight (ViT-B/32: ~88M draws saved)
        model = create_clip(arch)
    state = read_state_dict(path)
    check_fits(model, state, path, arch)
    expected = model.state_dict()
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return freeze(model, device, dtype)


def load_bundled_clip(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """Studio's own small CLIP format (config + weights), read by ``studio.ml.clip_configs``."""
    try:
        from studio.ml import clip_configs
    except ImportError as exc:
        raise WeightsError(f"{path}: Studio's small-CLIP loader is not available ({exc})") from None
    if not Path(path).is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        loaded = clip_configs.load_bundled_clip(path)
    except WeightsError:
        raise
    except Exception as exc:  # safetensors, json and config errors alike: the file is unusable
        raise WeightsError(f"{path}: not a Studio small-CLIP file ({one_line(exc, 200)})") from None
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    return freeze(model, device, dtype)


def create_small_clip(name: str):
    """One of Studio's small CLIP configurations with random weights (``studio.ml.clip_configs``)."""
    from studio.ml import clip_configs

    return clip_configs.create_small_clip(name)
