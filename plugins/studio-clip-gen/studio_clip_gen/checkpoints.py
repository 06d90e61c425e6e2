"""Reading VQGAN checkpoints without running code from them, and mapping their layouts.

taming's released checkpoints are PyTorch Lightning files: next to ``state_dict`` they pickle
Lightning objects (callbacks keyed by their class, sometimes hyper-parameter objects), so
``torch.load(weights_only=True)`` refuses them and plain ``torch.load`` would import Lightning
and run whatever the pickle names. :func:`read_checkpoint` instead turns every global that
torch does not allow into an inert :class:`Placeholder` class that is never imported or called
for real:

1. zip checkpoints go through torch's own weights-only unpickler, with a placeholder class
   allow-listed under each unknown name (found by torch's static scan of the pickle);
2. if that unpickler still refuses the file (it will not fill a dict-like placeholder, and it
   does not read every pickle opcode or the legacy non-zip format), ``torch.load`` runs with a
   restricted ``pickle_module`` whose ``find_class`` returns torch's weights-only allow-list
   and placeholders for everything else.

Modules torch never allows (``os``, ``sys``, ...) are refused outright.

Layouts: the clip-gen reimplementation stores the same VQGAN under ``nn.Sequential`` names with
attention as a one-head ``nn.MultiheadAttention``; :func:`clipgen_to_taming` is the pure
re-keying onto taming's names (and :func:`taming_to_clipgen` its inverse).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from studio.api import WeightsError, check_finite, one_line, save_safetensors

from .vqgan import VQConfig, VQModel

__all__ = [
    "WeightsError",
    "Placeholder",
    "read_checkpoint",
    "extract_state_dict",
    "check_state_dict",
    "clipgen_to_taming",
    "taming_to_clipgen",
    "load_vqgan_state",
    "load_vqgan",
    "write_safetensors",
    "read_safetensors",
]

#: Modules torch refuses even when allow-listed; a file naming them is refused here too.
_BLOCKED_MODULES = ("sys", "os", "posix", "nt")


# ---- placeholders ------------------------------------------------------------------------------


class Placeholder:
    """Stands in for an object of a class that was not imported; it only keeps what the pickle gave it.

    Supports exactly what unpickling does to objects (construction with arguments, ``BUILD``
    state, item and list appends) and nothing else, so a checkpoint's callbacks or
    hyper-parameter objects survive as inspectable data.
    """

    fqn = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, state=None, items={}, values=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.values.append(value)

    def extend(self, values: Any) -> None:
        self.values.extend(values)

    def __repr__(self) -> str:
        return f"<placeholder for {self.fqn}>"


@functools.lru_cache(maxsize=None)
def placeholder_class(fqn: str) -> type[Placeholder]:
    """One placeholder class per dotted name (torch's allow-list maps names to distinct objects)."""
    return type(fqn.rsplit(".", 1)[-1], (Placeholder,), {"fqn": fqn, "__module__": "studio_clip_gen.placeholders"})


def _is_blocked(fqn: str) -> bool:
    return any(fqn == m or fqn.startswith(m + ".") for m in _BLOCKED_MODULES)


# ---- reading files -----------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in a checkpoint file (safetensors or torch.save), on the CPU, safely."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    if zipfile.is_zipfile(path):
        try:
            return _load_weights_only(path)
        except pickle.UnpicklingError:
            pass  # a structure torch's unpickler does not build; the restricted pickle module does
    elif path.stat().st_size < 8:
        raise WeightsError(f"{path}: not a checkpoint (empty or truncated)")
    return _load_restricted(path)


def _load_weights_only(path: Path) -> Any:
    try:
        unknown = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # a broken zip fails in many ways; none of them ran code
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint or truncated ({one_line(exc, 200)})") from None
    _refuse_blocked(path, unknown)
    allowed = [(placeholder_class(fqn), fqn) for fqn in sorted(unknown)]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint or truncated ({one_line(exc, 200)})") from None


def _refuse_blocked(path: Path, names: Any) -> None:
    for fqn in names:
        if _is_blocked(fqn):
            raise WeightsError(f"{path}: refers to {fqn}, refused (nothing was executed)")


def _torch_allowed_globals() -> dict[str, Any]:
    """torch's weights-only allow-list (tensor rebuild functions, dtypes, plain containers)."""
    from torch import _weights_only_unpickler

    return dict(_weights_only_unpickler._get_allowed_globals())


class _Refused(pickle.UnpicklingError):
    """A global the loader will not stand in for (see ``_BLOCKED_MODULES``)."""


class _RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` returns torch's allow-listed globals and a placeholder for anything else."""

    def find_class(self, module: str, name: str) -> Any:
        fqn = f"{module}.{name}"
        if _is_blocked(fqn):
            raise _Refused(f"refers to {fqn}, refused (nothing was executed)")
        allowed = _torch_allowed_globals()
        if fqn in allowed:
            return allowed[fqn]
        return placeholder_class(fqn)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


#: What ``torch.load(pickle_module=...)`` needs from a pickle module (the legacy format calls ``load``).
_RESTRICTED_PICKLE = types.SimpleNamespace(
    __name__="studio_clip_gen.restricted_pickle", Unpickler=_RestrictedUnpickler, load=_restricted_load
)


def _load_restricted(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RESTRICTED_PICKLE)
    except _Refused as exc:
        raise WeightsError(f"{path}: {one_line(exc, 200)}") from None
    except Exception as exc:  # arbitrary bytes fail in many ways; none of them ran code
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint or truncated ({one_line(exc, 200)})") from None


def extract_state_dict(obj: Any, path: str | Path = "<memory>") -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` dict in a Lightning (``state_dict``) or clip-gen (``model``) file."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path}: not a checkpoint with a state dict (found {type(obj).__name__})")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: not a state dict (entry {key!r} is {type(value).__name__}, not a tensor)")
    check_finite(obj, path)
    return dict(obj)


def check_state_dict(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`WeightsError` naming the first missing, unexpected or mis-shaped key."""
    for key, value in expected.items():
        if key not in state:
            raise WeightsError(f"{what}: missing key {key!r}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise WeightsError(
                f"{what}: key {key!r} has shape {list(state[key].shape)}, expected {list(value.shape)}"
            )
    for key in state:
        if key not in expected:
            raise WeightsError(f"{what}: unexpected key {key!r}")
    check_finite(state, what)


# ---- safetensors with a config (Studio's own format) ------------------------------------------


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write tensors plus a JSON ``meta`` (config, provenance) atomically: temp file, then rename."""
    path = Path(path)
    save_safetensors(path, tensors, {"studio": json.dumps(meta)})  # byte-reproducible: same weights, same sha256
    return path


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the ``meta`` dict written by :func:`write_safetensors` (empty for foreign files)."""
    return _read_safetensors(Path(path), with_tensors=True)


def read_safetensors_meta(path: str | Path) -> dict[str, Any]:
    """Only the ``meta`` dict of :func:`read_safetensors`: the header, not the weights."""
    return _read_safetensors(Path(path), with_tensors=False)[1]


def _read_safetensors(path: Path, with_tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get("studio")
            tensors = {key: f.get_tensor(key) for key in f.keys()} if with_tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({one_line(exc, 200)})") from None
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        raise WeightsError(f"{path}: unreadable metadata") from None
    return tensors, meta


# ---- the clip-gen layout -------------------------------------------------------------------------
#
# clip-gen (HFAiLab) builds each level as one nn.Sequential: resnet blocks (``block.{0,2,3,6}`` =
# norm1, conv1, norm2, conv2 around swish/dropout; ``shortcut`` = nin_shortcut), attention blocks
# (``norm`` + one-head ``attn`` = nn.MultiheadAttention, q/k/v stacked in ``in_proj_*``) and
# resamplers (``conv``), numbered consecutively. ``encoder.final`` = norm_out, swish, conv_out and
# quant_conv; ``decoder.quant_conv_in`` = post_quant_conv; ``decoder.final`` = norm_out, swish,
# conv_out. One-head MultiheadAttention computes exactly taming's AttnBlock (softmax(q k^T / sqrt(C)) v),
# so the 1x1 convs are the linear weights with two unit dimensions.

_RES_PARAMS = {"block.0": "norm1", "block.2": "conv1", "block.3": "norm2", "block.6": "conv2", "shortcut": "nin_shortcut"}


def _module_pairs(cfg: VQConfig) -> Iterator[tuple[str, str, str]]:
    """``(clip-gen prefix, taming prefix, kind)`` for every module, kind in res/attn/plain."""
    yield "encoder.conv_in", "encoder.conv_in", "plain"
    n, res, levels = 0, cfg.resolution, len(cfg.ch_mult)
    for level in range(levels):
        for i in range(cfg.num_res_blocks):
            yield f"encoder.down.{n}", f"encoder.down.{level}.block.{i}", "res"
            n += 1
            if res in cfg.attn_resolutions:
                yield f"encoder.down.{n}", f"encoder.down.{level}.attn.{i}", "attn"
                n += 1
        if level != levels - 1:
            yield f"encoder.down.{n}.conv", f"encoder.down.{level}.downsample.conv", "plain"
            n, res = n + 1, res // 2
    for part in ("encoder", "decoder"):
        yield f"{part}.mid.0", f"{part}.mid.block_1", "res"
        yield f"{part}.mid.1", f"{part}.mid.attn_1", "attn"
        yield f"{part}.mid.2", f"{part}.mid.block_2", "res"
    yield "encoder.final.0", "encoder.norm_out", "plain"
    yield "encoder.final.2", "encoder.conv_out", "plain"
    yield "encoder.final.3", "quant_conv", "plain"
    yield "decoder.quant_conv_in", "post_quant_conv", "plain"
    yield "decoder.conv_in", "decoder.conv_in", "plain"
    n, res = 0, cfg.grid
    for level in reversed(range(levels)):
        for i in range(cfg.num_res_blocks + 1):
            yield f"decoder.up.{n}", f"decoder.up.{level}.block.{i}", "res"
            n += 1
            if res in cfg.attn_resolutions:
                yield f"decoder.up.{n}", f"decoder.up.{level}.attn.{i}", "attn"
                n += 1
        if level:
            yield f"decoder.up.{n}.conv", f"decoder.up.{level}.upsample.conv", "plain"
            n, res = n + 1, res * 2
    yield "decoder.final.0", "decoder.norm_out", "plain"
    yield "decoder.final.2", "decoder.conv_out", "plain"
    yield "quantizer.embedding", "quantize.embedding", "plain"


def _take(state: dict[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise WeightsError(f"{what}: missing key {key!r}")
    return state.pop(key)


def clipgen_to_taming(state: dict[str, torch.Tensor], cfg: VQConfig, what: str = "clip-gen VQGAN") -> dict[str, torch.Tensor]:
    """Re-key a clip-gen ``VQGAN`` state dict onto taming's names (the discriminator is dropped)."""
    src = {k: v for k, v in state.items() if not k.startswith("discriminator.")}
    out: dict[str, torch.Tensor] = {}
    for cg, tm, kind in _module_pairs(cfg):
        if kind == "plain":
            for suffix in ("weight", "bias"):
                if f"{cg}.{suffix}" in src or suffix == "weight":
                    out[f"{tm}.{suffix}"] = _take(src, f"{cg}.{suffix}", what)
        elif kind == "res":
            for cg_name, tm_name in _RES_PARAMS.items():
                if cg_name == "shortcut" and f"{cg}.shortcut.weight" not in src:
                    continue
                for suffix in ("weight", "bias"):
                    out[f"{tm}.{tm_name}.{suffix}"] = _take(src, f"{cg}.{cg_name}.{suffix}", what)
        else:
            out[f"{tm}.norm.weight"] = _take(src, f"{cg}.norm.weight", what)
            out[f"{tm}.norm.bias"] = _take(src, f"{cg}.norm.bias", what)
            weights = _take(src, f"{cg}.attn.in_proj_weight", what).chunk(3, dim=0)
            biases = _take(src, f"{cg}.attn.in_proj_bias", what).chunk(3, dim=0)
            for name, w, b in zip("qkv", weights, biases):
                out[f"{tm}.{name}.weight"] = w[:, :, None, None].clone()
                out[f"{tm}.{name}.bias"] = b.clone()
            out[f"{tm}.proj_out.weight"] = _take(src, f"{cg}.attn.out_proj.weight", what)[:, :, None, None]
            out[f"{tm}.proj_out.bias"] = _take(src, f"{cg}.attn.out_proj.bias", what)
    if src:
        raise WeightsError(f"{what}: unexpected key {next(iter(src))!r}")
    return out


def taming_to_clipgen(state: dict[str, torch.Tensor], cfg: VQConfig, what: str = "taming VQGAN") -> dict[str, torch.Tensor]:
    """The inverse of :func:`clipgen_to_taming` (without a discriminator)."""
    src = dict(state)
    out: dict[str, torch.Tensor] = {}
    for cg, tm, kind in _module_pairs(cfg):
        if kind == "plain":
            for suffix in ("weight", "bias"):
                if f"{tm}.{suffix}" in src or suffix == "weight":
                    out[f"{cg}.{suffix}"] = _take(src, f"{tm}.{suffix}", what)
        elif kind == "res":
            for cg_name, tm_name in _RES_PARAMS.items():
                if cg_name == "shortcut" and f"{tm}.nin_shortcut.weight" not in src:
                    continue
                for suffix in ("weight", "bias"):
                    out[f"{cg}.{cg_name}.{suffix}"] = _take(src, f"{tm}.{tm_name}.{suffix}", what)
        else:
            out[f"{cg}.norm.weight"] = _take(src, f"{tm}.norm.weight", what)
            out[f"{cg}.norm.bias"] = _take(src, f"{tm}.norm.bias", what)
            out[f"{cg}.attn.in_proj_weight"] = torch.cat([_take(src, f"{tm}.{n}.weight", what).flatten(1) for n in "qkv"])
            out[f"{cg}.attn.in_proj_bias"] = torch.cat([_take(src, f"{tm}.{n}.bias", what) for n in "qkv"])
            out[f"{cg}.attn.out_proj.weight"] = _take(src, f"{tm}.proj_out.weight", what).flatten(1)
            out[f"{cg}.attn.out_proj.bias"] = _take(src, f"{tm}.proj_out.bias", what)
    if src:
        raise WeightsError(f"{what}: unexpected key {next(iter(src))!r}")
    return out


# ---- VQGAN loading ---------------------------------------------------------------------------------

#: What the clip-gen reimplementation changed relative to taming (besides names).
CLIPGEN_OVERRIDES = {"eps": 1e-5, "beta": 0.2}


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``taming`` or ``clip-gen``, from a key only one of them has."""
    if "quantize.embedding.weight" in state:
        return "taming"
    if "quantizer.embedding.weight" in state:
        return "clip-gen"
    raise WeightsError("not a VQGAN state dict (no quantize.embedding.weight or quantizer.embedding.weight)")


def training_checkpoint_config(raw: Any) -> VQConfig | None:
    """The config a ``studio clip-gen train vqgan`` checkpoint carries (None for any other file),
    so a run can be judged or built on before it finishes."""
    if isinstance(raw, dict) and isinstance(raw.get("vq"), dict) and "model" in raw:
        try:
            return VQConfig.from_dict(raw["vq"])
        except (TypeError, ValueError):
            return None
    return None


def load_vqgan_state(path: str | Path, cfg: VQConfig | None = None, raw: Any = None) -> tuple[dict[str, torch.Tensor], VQConfig]:
    """Taming-layout VQGAN weights from any supported file, checked key by key against ``cfg``.

    ``cfg`` may be omitted for Studio's own safetensors files, which carry their config.
    Returns the state dict and the config to build (eps and beta follow the file's layout).
    ``loss.*`` (LPIPS and discriminator) is dropped: sampling never needs it. ``raw``: the
    checkpoint's contents when the caller has read them already (a file is read once).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state, meta = read_safetensors(path)
        if cfg is None and "vqgan" in meta:
            cfg = VQConfig.from_dict(meta["vqgan"])
    else:
        raw = read_checkpoint(path) if raw is None else raw
        state = extract_state_dict(raw, path)
        cfg = cfg or training_checkpoint_config(raw)
    if cfg is None:
        raise WeightsError(f"{path}: carries no VQGAN config; give one (a taming yaml)")
    try:
        layout = detect_layout(state)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    if layout == "clip-gen":
        cfg = dataclasses.replace(cfg, **CLIPGEN_OVERRIDES)
        state = clipgen_to_taming(state, cfg, what=str(path))
    else:
        state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    with torch.device("meta"):
        expected = VQModel(cfg).state_dict()
    check_state_dict(expected, state, f"{path}: does not fit the VQGAN config")
    return {k: v.to(expected[k].dtype) for k, v in state.items()}, cfg


def load_vqgan(path: str | Path, cfg: VQConfig | None = None) -> VQModel:
    """A :class:`VQModel` with the weights of ``path`` (taming, clip-gen or Studio safetensors), eval mode."""
    from studio.api import without_random_init

    state, cfg = load_vqgan_state(path, cfg)
    with without_random_init():  # the strict load sets every weight
        model = VQModel(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()
