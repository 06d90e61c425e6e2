"""A CLIP-GEN model on disk: one folder, three safetensors files and ``model.json``.

::

    model.json               {"format": "studio-clip-gen-1", "vqgan": ..., "transformer": ..., "clip": {...}}
    vqgan.safetensors        taming-layout VQGAN, config in the file's metadata
    transformer.safetensors  the GPT, config (and the CLIP it was trained with) in its metadata
    clip.safetensors         the CLIP whose embeddings condition the GPT
    rerank-clip.safetensors  optional: the CLIP that scores finished candidates (``"rerank": {...}``
                             in model.json, the same form as ``clip``); without it the
                             conditioning CLIP scores them
    claims.safetensors       optional: a claims classifier (:mod:`studio.ml.claims`) that also
                             scores candidates of prompts in the `shapes` grammar, added to the
                             CLIP's score times ``clip_weight`` (``"claims": {"file": ...,
                             "clip_weight": W}`` in model.json; a folder without the weight
                             was made when it was always 1)

The bundled default model (``studio_clip_gen/weights``) and every model imported with
``studio models import clip-gen NAME`` (``<models_dir>/clip-gen/NAME``) have this layout.
:func:`assemble` builds one from any supported source files (taming or clip-gen checkpoints,
open_clip weights, Studio's own training outputs), converting everything to safetensors once,
so loading a model never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

from studio.api import atomic_dir, one_line

FORMAT = "studio-clip-gen-1"
MODEL_JSON = "model.json"


def read_manifest(root: Path) -> dict[str, Any]:
    """``model.json`` of a model folder; ``FileNotFoundError`` when the folder holds none."""
    data = json.loads((root / MODEL_JSON).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{root}: unknown model format {data.get('format')!r}")
    return data


def clip_path(root: Path, spec: dict[str, Any]) -> Path:
    """The CLIP file ``model.json`` names: in the model folder, or inside an installed package.

    ``{"kind": "bundled", "package": "studio.ml", "file": "weights/clip-small.safetensors"}`` is
    how the bundled model uses the small CLIP that Studio itself ships, so the file is
    installed once.
    """
    if spec.get("package"):
        from importlib.resources import files

        return Path(str(files(spec["package"]).joinpath(spec["file"])))
    return root / spec["file"]


def weights_sha256(root: Path, manifest: dict[str, Any]) -> str:
    """One digest for the model: sha256 over the sha256 of each weights file, in a fixed order.

    Only the files' contents count, not their names or places: the same files give the same digest.
    A re-ranking CLIP and a claims classifier count too (they decide which candidate is the image),
    and so does the weight of the CLIP beside the classifier; a folder without them keeps the
    digest it always had.
    """
    from studio.api import sha256_file_cached  # remembered by path, size and mtime in the home

    outer = hashlib.sha256()
    paths = [root / manifest["vqgan"], root / manifest["transformer"], clip_path(root, manifest["clip"])]
    if manifest.get("rerank"):
        paths.append(clip_path(root, manifest["rerank"]))
    if manifest.get("claims"):
        paths.append(root / manifest["claims"]["file"])
    for path in paths:
        outer.update(sha256_file_cached(path).encode())
    if records_clip_weight(manifest):
        outer.update(f"claims clip_weight {claims_clip_weight(manifest)!r}".encode())
    return outer.hexdigest()


def records_clip_weight(manifest: dict[str, Any]) -> bool:
    """Whether the folder states the CLIP's weight beside its claims classifier (folders made
    before the setting existed do not, and sum the two scores)."""
    return "clip_weight" in (manifest.get("claims") or {})


def claims_clip_weight(manifest: dict[str, Any]) -> float:
    """How much the CLIP's score counts beside the claims classifier's (1 in folders made before
    the weight was recorded, when the two were always summed)."""
    return checked_clip_weight((manifest.get("claims") or {}).get("clip_weight", 1.0), "model.json: the claims clip_weight")


def checked_clip_weight(weight: Any, what: str = "the claims clip_weight") -> float:
    """``weight`` as a float, if it is a finite number >= 0 (-0.0 read as 0.0); else a one-line ValueError."""
    ok = isinstance(weight, (int, float)) and not isinstance(weight, bool)
    try:
        ok = ok and math.isfinite(weight) and weight >= 0
    except OverflowError:  # an integer too large for a float
        ok = False
    if not ok:
        raise ValueError(f"{what} must be a finite number >= 0, not {str(weight)[:40]}")
    return float(weight) + 0.0


def rerank_is_clip(root: Path, manifest: dict[str, Any]) -> bool:
    """Whether the re-ranking CLIP is the conditioning CLIP itself (the same architecture and bytes).

    Such a folder scores candidates exactly as one without ``rerank`` does, so the generator loads
    that CLIP once instead of twice.
    """
    from studio.api import sha256_file_cached

    clip, rerank = manifest["clip"], manifest.get("rerank")
    if not rerank:
        return True
    if (clip.get("kind"), clip.get("arch")) != (rerank.get("kind"), rerank.get("arch")):
        return False
    return sha256_file_cached(clip_path(root, clip)) == sha256_file_cached(clip_path(root, rerank))


def clip_card(root: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """What a CLIP's card (``export-clip``'s JSON beside the file) says of its training, if it has one."""
    path = clip_path(root, spec).with_suffix(".json")
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    keys = ("architecture", "data", "steps", "samples_seen", "wall_time_s", "training", "zero_shot")
    return {k: card[k] for k in keys if k in card}


def load_clip(root: Path, spec: dict[str, Any], device: str = "cpu"):
    """The frozen CLIP named by ``model.json``'s ``clip`` entry."""
    import torch

    from studio.ml import clip_load

    path = clip_path(root, spec)
    if spec.get("kind") == "bundled":
        return clip_load.load_bundled_clip(path, device=device, dtype=torch.float32)
    _register_small_clips()
    return clip_load.load_clip(spec["arch"], path, device=device, dtype=torch.float32)


def _register_small_clips() -> None:
    """Make Studio's small CLIP architectures (``studio-tiny-64``...) known to open_clip by name."""
    try:
        from studio.ml.clip_configs import register_configs
    except ImportError:
        return
    register_configs()


def _is_bundled_clip(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == "studio-clip-bundled-1"
    except Exception:  # noqa: BLE001 - not ours; the open_clip reader reports the real problem
        return False


def read_clip(path: Path, arch: str | None, file: str = "clip.safetensors", option: str = "--clip-arch"):
    """A CLIP from a Studio bundled file or an open_clip weights file (``arch`` needed), and its spec
    (``file``: its name in a model folder)."""
    from .checkpoints import WeightsError

    if _is_bundled_clip(path):
        from studio.ml.clip_configs import load_bundled_clip

        return load_bundled_clip(path).requires_grad_(False), {"kind": "bundled", "file": file}
    if not arch:
        raise WeightsError(f"{path}: give the CLIP architecture ({option}, e.g. ViT-B-32)")
    from studio.ml.clip_load import load_clip as load_open_clip

    _register_small_clips()
    return load_open_clip(arch, path), {"kind": "open_clip", "arch": arch, "file": file}


def _place_clip(tmp: Path, path: Path, model, spec: dict[str, Any], arch: str | None, share: bool) -> dict[str, Any]:
    """Put a CLIP into the folder being built (or name Studio's installed copy); its model.json entry."""
    from studio.ml import installed_clip_ref

    from .checkpoints import write_safetensors

    shared = installed_clip_ref(path) if share and spec["kind"] == "bundled" else None
    if shared is not None:
        return {"kind": "bundled", **shared}
    if spec["kind"] == "bundled":
        shutil.copyfile(path, tmp / spec["file"])
        card = path.with_suffix(".json")  # `studio train export-clip` writes the CLIP's card beside it
        if card.is_file():
            shutil.copyfile(card, (tmp / spec["file"]).with_suffix(".json"))
    else:
        write_safetensors(tmp / spec["file"], model.state_dict(), {"arch": arch, "source": path.name})
    return spec


def read_vqgan(path: Path, config_yaml: Path | None):
    from .checkpoints import (WeightsError, extract_state_dict, load_vqgan_state, read_checkpoint,
                              training_checkpoint_config)
    from .vqgan import F16_1024, VQConfig

    cfg = None
    if config_yaml is not None:
        import yaml

        try:
            cfg = VQConfig.from_taming_yaml(yaml.safe_load(config_yaml.read_text()))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise WeightsError(f"{config_yaml}: {one_line(exc)}") from None
    elif path.suffix != ".safetensors":
        raw = read_checkpoint(path)
        cfg = training_checkpoint_config(raw)  # a Studio training run's checkpoint knows its network
        if cfg is not None:
            return load_vqgan_state(path, cfg, raw)
        # No yaml: taming's ImageNet f16 network, with the codebook size and width of the file.
        state = extract_state_dict(raw, path)
        codes = state.get("quantize.embedding.weight", state.get("quantizer.embedding.weight"))
        if codes is None:
            raise WeightsError(f"{path}: not a VQGAN checkpoint (no codebook)")
        cfg = VQConfig.from_dict({**F16_1024.to_dict(), "n_embed": codes.shape[0], "embed_dim": codes.shape[1]})
    return load_vqgan_state(path, cfg)


def read_transformer(path: Path, heads: int | None):
    from .checkpoints import WeightsError, check_state_dict, extract_state_dict, read_checkpoint, read_safetensors
    from .gpt import GPT, GPTConfig, clipgen_to_ours

    import torch

    meta: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        state, meta = read_safetensors(path)
    else:
        raw = read_checkpoint(path)
        if isinstance(raw, dict) and isinstance(raw.get("gpt"), dict) and isinstance(raw.get("model"), dict):
            meta = {"gpt": raw["gpt"]}  # a `studio clip-gen train transformer` checkpoint: a run before it ends
            state = raw["model"]
        else:
            state = extract_state_dict(raw, path)
    if "gpt" in meta:
        cfg = GPTConfig.from_dict(meta["gpt"])
    else:
        try:
            state, cfg = clipgen_to_ours(state, n_heads=heads)
        except ValueError as exc:
            raise WeightsError(f"{path}: {exc}") from None
    with torch.device("meta"):
        expected = GPT(cfg).state_dict()
    check_state_dict(expected, state, f"{path}: does not fit the transformer config")
    return state, cfg, meta


def _training_record(path: Path) -> dict[str, Any]:
    """The steps, wall time and last metrics a Studio training run wrote into a safetensors file,
    so a packaged part (and a package made from it again) still says how it was trained."""
    if path.suffix != ".safetensors":
        return {}
    from .checkpoints import read_safetensors_meta

    meta = read_safetensors_meta(path)
    return {k: meta[k] for k in ("steps", "train_seconds", "metrics") if k in meta}


def assemble(
    dest: Path,
    *,
    vqgan: Path,
    transformer: Path,
    clip: Path,
    vqgan_config: Path | None = None,
    clip_arch: str | None = None,
    rerank_clip: Path | None = None,
    rerank_clip_arch: str | None = None,
    heads: int | None = None,
    claims: Path | None = None,
    claims_clip_weight: float = 0.0,
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
    share_installed_clip: bool = False,
) -> dict[str, Any]:
    """Check that the three parts fit together and write them as a model folder at ``dest``.

    Raises ``WeightsError`` (one line) for any unusable input. The folder appears atomically:
    it is built under a temporary name and renamed at the end. ``share_installed_clip``: a CLIP
    that Studio itself ships is named by package instead of copied (how a bundled model folder
    uses it; an imported model keeps its own copy, which an upgrade of Studio cannot change).
    ``rerank_clip``: a second CLIP that scores the candidates; it must embed images and prompts
    but need not share the conditioning CLIP's space. ``claims``: a claims classifier
    (:func:`studio.ml.claims.save_claims_net`) that scores candidates of `shapes` prompts, with
    the CLIP's score counting ``claims_clip_weight`` beside it (0, the default: the classifier
    alone decides; 1: the two summed, as every folder made before the weight was recorded does).
    """
    from .checkpoints import WeightsError, write_safetensors
    from .clip_embed import embed_dim
    from .train import check_compatible

    if dest.exists() and not overwrite:
        raise WeightsError(f"{dest} already exists")
    try:
        claims_clip_weight = checked_clip_weight(claims_clip_weight)
    except ValueError as exc:
        raise WeightsError(str(exc)) from None
    vq_state, vq_cfg = read_vqgan(vqgan, vqgan_config)
    gpt_state, gpt_cfg, gpt_meta = read_transformer(transformer, heads)
    clip_model, clip_spec = read_clip(clip, clip_arch)
    rerank = (read_clip(rerank_clip, rerank_clip_arch, "rerank-clip.safetensors", "--rerank-clip-arch")
              if rerank_clip is not None else None)
    try:
        check_compatible(gpt_cfg, vq_cfg, embed_dim(clip_model))
        if claims is not None:
            from studio.ml.claims import load_claims_net

            net = load_claims_net(claims)
            if net.image_size != vq_cfg.resolution:
                raise ValueError(f"the claims classifier reads {net.image_size}px pictures, the VQGAN makes "
                                 f"{vq_cfg.resolution}px ones")
    except ValueError as exc:
        raise WeightsError(f"the parts do not fit together: {exc}") from None

    with atomic_dir(dest) as tmp:
        write_safetensors(tmp / "vqgan.safetensors", vq_state,
                          {**_training_record(vqgan), "vqgan": vq_cfg.to_dict(), "source": vqgan.name})
        write_safetensors(tmp / "transformer.safetensors", gpt_state,
                          {**gpt_meta, "gpt": gpt_cfg.to_dict(), "clip": clip_spec, "source": transformer.name})
        # the transformer's metadata above keeps naming its CLIP as before, so its bytes (and the
        # model's digest) do not depend on how the folder refers to the CLIP
        clip_spec = _place_clip(tmp, clip, clip_model, clip_spec, clip_arch, share_installed_clip)
        manifest = {"format": FORMAT, "vqgan": "vqgan.safetensors", "transformer": "transformer.safetensors",
                    "clip": clip_spec}
        if rerank is not None:
            manifest["rerank"] = _place_clip(tmp, rerank_clip, rerank[0], rerank[1], rerank_clip_arch, share_installed_clip)
        if claims is not None:
            shutil.copyfile(claims, tmp / "claims.safetensors")
            manifest["claims"] = {"file": "claims.safetensors", "clip_weight": claims_clip_weight}
        manifest |= {"resolution": vq_cfg.resolution, "grid": vq_cfg.grid,
                     "null_condition": gpt_cfg.null_condition, "source": source or {}}
        (tmp / MODEL_JSON).write_text(json.dumps(manifest, indent=2) + "\n")
    return {**manifest, "path": str(dest), "weights_sha256": weights_sha256(dest, manifest)}
