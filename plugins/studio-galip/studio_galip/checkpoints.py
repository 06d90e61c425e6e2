"""GALIP weights on disk: official training checkpoints and Studio's safetensors format.

Official checkpoints (``{'model': {'netG', 'netD', 'netC'}, 'optimizers': ..., 'epoch'}``) are
read with ``torch.load(weights_only=True)``; ``module.`` prefixes are stripped and fp16 tensors
cast to fp32. Studio's format is one safetensors file with ``netG.``/``netD.``/``netC.``
prefixed tensors and the :class:`GalipConfig` in its metadata, so a file alone says how to
build the networks. The generator part usually leaves out the frozen CLIP trunk (it comes
from the CLIP file); it is kept only when it differs from that file.

Every problem is a one-line :class:`WeightsError` naming the file and what does not fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from studio.api import WeightsError, check_finite, load_checkpoint, one_line, save_safetensors, sha256_file
from studio.ml.clip_load import first_misfit, strip_prefix

from .model import GalipConfig, Nets, NetG, is_trunk_key

FORMAT = "studio-galip/1"
NETS = ("netG", "netD", "netC")


def _to_fp32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


@dataclass
class GalipWeights:
    """Network states read from a file; ``config`` is None for official checkpoints."""

    states: dict[str, dict[str, torch.Tensor]]
    config: GalipConfig | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # optimisers, step... (training checkpoints)


# ---- reading ----------------------------------------------------------------------------------


def read_official(path: str | Path) -> GalipWeights:
    """An official (or Studio training) checkpoint: ``{'model': {'netG', 'netD', 'netC'}, ...}``."""
    path = Path(path)
    obj = load_checkpoint(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict) or "netG" not in obj["model"]:
        raise WeightsError(f"{path}: not a GALIP checkpoint (expected {{'model': {{'netG', 'netD', 'netC'}}}})")
    states = {}
    for name in NETS:
        state = obj["model"].get(name)
        if state is None:
            continue
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"{path}: model.{name} is not a state dict")
        states[name] = _to_fp32(strip_prefix(state, "module."))
    config = None
    if isinstance(obj.get("config"), dict):
        config = _config_from(obj["config"], path)
    extra = {k: v for k, v in obj.items() if k != "model"}
    return GalipWeights(states, config, meta=dict(obj.get("meta") or {}), extra=extra)


def read_studio(path: str | Path) -> GalipWeights:
    """Studio's safetensors format (config and metadata in the header)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({one_line(exc, 200)})") from None
    if header.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a Studio GALIP weights file (format {header.get('format')!r})")
    try:
        config = _config_from(json.loads(header["config"]), path)
        meta = json.loads(header.get("meta", "{}"))
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"{path}: damaged metadata ({exc})") from None
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        net, _, name = key.partition(".")
        if net not in NETS:
            raise WeightsError(f"{path}: unexpected tensor {key!r}")
        states.setdefault(net, {})[name] = value.float() if value.is_floating_point() else value
    if "netG" not in states:
        raise WeightsError(f"{path}: holds no generator weights")
    return GalipWeights(states, config, meta)


def read_weights(path: str | Path) -> GalipWeights:
    """Either format, chosen by the suffix (``.safetensors`` is Studio's); NaN or infinite weights are refused."""
    weights = read_studio(path) if Path(path).suffix == ".safetensors" else read_official(path)
    check_finite(weights.states, path)
    return weights


def _config_from(data: dict, path: Path) -> GalipConfig:
    try:
        return GalipConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: bad GALIP config ({exc})") from None


# ---- fitting ----------------------------------------------------------------------------------


def load_into(nets: Nets, weights: GalipWeights, path: str | Path, need_d: bool = False) -> None:
    """Load ``weights`` into ``nets`` strictly; the first misfit is named in the error.

    A generator state without the frozen CLIP trunk keys is accepted (the trunk then stays
    as the CLIP file has it); every other key must be present with its exact shape.
    """
    _load_generator(nets.G, weights.states["netG"], path)
    for name, net in (("netD", nets.D), ("netC", nets.C)):
        if net is None:
            continue
        if name not in weights.states:
            if need_d:
                raise WeightsError(f"{path}: holds no {name} weights (needed to continue training)")
            continue
        problem = first_misfit(net.state_dict(), weights.states[name])
        if problem:
            raise WeightsError(f"{path}: {name} does not fit: {problem}")
        net.load_state_dict(weights.states[name], strict=True)


def _load_generator(G: NetG, state: dict[str, torch.Tensor], path: str | Path) -> None:
    expected = G.state_dict()
    has_trunk = any(is_trunk_key(k) for k in state)
    if not has_trunk:
        expected = {k: v for k, v in expected.items() if not is_trunk_key(k)}
    problem = first_misfit(expected, state)
    if problem:
        raise WeightsError(f"{path}: netG does not fit: {problem}")
    with torch.no_grad():
        for key, target in G.state_dict().items():
            if key in state:
                target.copy_(state[key])


def infer_config(weights: GalipWeights, clip, path: str | Path = "") -> GalipConfig:
    """The config of an official-layout checkpoint (which carries none), from its shapes.

    CLIP-dependent fields come from ``clip``; widths (ngf, adapter and critic channels, number
    of prompts and taps) from the tensors, so official-layout checkpoints of other sizes load too.
    The strict load that follows catches anything this does not explain.
    """
    base = GalipConfig.for_clip(clip)
    g = weights.states["netG"]
    try:
        conv1 = g["mapping.FBlocks.0.conv1.weight"]
        n_prompts = g["mapping.fc_prompt.weight"].shape[0] // base.clip_width
        values: dict[str, Any] = dict(
            nz=g["fc_code.weight"].shape[1],
            ngf=g["to_rgb.1.weight"].shape[1],
            code_ch=conv1.shape[1],
            mid_ch=conv1.shape[0],
            m_blocks=len({k.split(".")[2] for k in g if k.startswith("mapping.FBlocks.")}),
        )
        if n_prompts != len(base.prompt_blocks):
            values["prompt_blocks"] = tuple(range(1, 1 + n_prompts))
        if "netD" in weights.states:
            d = weights.states["netD"]
            values["d_ch"] = d["main.conv_r.0.weight"].shape[0]
            n_taps = 1 + len({k.split(".")[1] for k in d if k.startswith("DBlocks.")})
            if n_taps != len(base.taps):
                raise WeightsError(f"{path}: netD expects {n_taps} CLIP taps, this CLIP gives {len(base.taps)}")
        if "netC" in weights.states:
            values["c_hidden"] = weights.states["netC"]["joint_conv.0.weight"].shape[0]
    except KeyError as exc:
        raise WeightsError(f"{path}: netG does not fit: missing key {exc.args[0]!r}") from None
    return GalipConfig(**{**base.to_dict(), **values, "taps": base.taps,
                          "prompt_blocks": values.get("prompt_blocks", base.prompt_blocks)})


def check_clip_fits(cfg: GalipConfig, clip, clip_name: str) -> None:
    """The CLIP must have the trunk shapes and embedding size the GALIP weights were built for."""
    found = GalipConfig.for_clip(clip)
    for key in ("clip_width", "grid", "clip_depth", "cond_dim"):
        want, got = getattr(cfg, key), getattr(found, key)
        if want != got:
            raise WeightsError(f"CLIP {clip_name} does not fit these GALIP weights: {key} is {got}, expected {want}")


def trunk_matches_clip(state: dict[str, torch.Tensor], G: NetG) -> bool:
    """Whether a checkpoint's copy of the frozen trunk equals the CLIP file's (exactly)."""
    current = G.state_dict()
    return all(torch.equal(v, current[k]) for k, v in state.items() if is_trunk_key(k) and k in current)


# ---- writing ----------------------------------------------------------------------------------


def save_studio(path: str | Path, nets: Nets, meta: dict[str, Any] | None = None,
                include_trunk: bool = False, include_d: bool = False) -> str:
    """Write Studio's safetensors file atomically; returns its sha256."""
    g_state = nets.G.state_dict() if include_trunk else nets.G.learnable_state_dict()
    tensors = {f"netG.{k}": v for k, v in g_state.items()}
    if include_d:
        tensors.update({f"netD.{k}": v for k, v in nets.D.state_dict().items()})
        tensors.update({f"netC.{k}": v for k, v in nets.C.state_dict().items()})
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "config": json.dumps(nets.cfg.to_dict()), "meta": json.dumps(meta or {})}
    path = Path(path)
    save_safetensors(path, tensors, header)  # byte-reproducible: same weights, same sha256
    return sha256_file(path)
