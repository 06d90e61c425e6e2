"""Studio's small CLIP configurations, registered with open_clip, and the bundled weights file.

The configurations are ordinary open_clip model configs: they are written as JSON files to a
private temporary folder and registered with ``open_clip.add_model_config``, so that
``open_clip.create_model("studio-tiny-64")`` and ``open_clip.get_tokenizer("studio-tiny-64")``
work like for any built-in architecture (and survive open_clip rescanning its registry).

The bundled file keeps the model small: the text grammar uses a few dozen of the 49,408 token
ids, so only those rows of the token embedding are stored (fp16), with their ids. Loading puts
them back into a full-size table, so the result is a standard open_clip model used with the
standard tokenizer; the rows that were not stored get the mean of those that were.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from studio.errors import StudioError

_TINY_VISION = {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32}
_TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4}

#: name -> open_clip model config. ``studio-tiny-64`` is the spec's prototype; the ``-avg``
#: variant pools the image by averaging all tokens, which keeps every patch's position in the
#: embedding instead of relying on the class token to gather it.
CONFIGS: dict[str, dict] = {
    "studio-tiny-64": {"embed_dim": 128, "quick_gelu": True, "vision_cfg": dict(_TINY_VISION), "text_cfg": dict(_TINY_TEXT)},
    "studio-tiny-64-avg": {
        "embed_dim": 128,
        "quick_gelu": True,
        "vision_cfg": {**_TINY_VISION, "pool_type": "avg"},
        "text_cfg": dict(_TINY_TEXT),
    },
    "studio-small-64": {
        "embed_dim": 192,
        "quick_gelu": True,
        "vision_cfg": {**_TINY_VISION, "width": 192, "layers": 6},
        "text_cfg": {**_TINY_TEXT, "width": 192, "heads": 6, "layers": 6},
    },
}
DEFAULT_CONFIG = "studio-tiny-64"


def register_configs() -> None:
    """Make every Studio config known to open_clip (idempotent)."""
    import open_clip

    if all(name in open_clip.list_models() for name in CONFIGS):
        return
    # open_clip reads configs from files, once, when a path is added; the folder can go right after
    with tempfile.TemporaryDirectory(prefix="studio-clip-configs-") as tmp:
        folder = Path(tmp)
        for name, cfg in CONFIGS.items():
            (folder / f"{name}.json").write_text(json.dumps(cfg, indent=2))
        open_clip.add_model_config(folder)


def create_small_clip(name: str = DEFAULT_CONFIG) -> torch.nn.Module:
    """A Studio CLIP with random weights, as a standard open_clip ``CLIP`` module."""
    import open_clip

    if name not in CONFIGS:
        raise ValueError(f"unknown Studio CLIP config {name!r} (known: {', '.join(CONFIGS)})")
    register_configs()
    # open_clip warns on the root logger that no pretrained weights were loaded: for a model
    # whose weights are loaded right after (or trained from scratch) that is noise to the user.
    root = logging.getLogger()
    root.addFilter(_no_pretrained_warning)
    try:
        return open_clip.create_model(name, pretrained=None)
    finally:
        root.removeFilter(_no_pretrained_warning)


def _no_pretrained_warning(record: logging.LogRecord) -> bool:
    return "No pretrained weights loaded" not in record.getMessage()


def get_tokenizer(name: str = DEFAULT_CONFIG):
    """open_clip's own tokenizer with the config's context length (32)."""
    import open_clip

    register_configs()
    return open_clip.get_tokenizer(name)


# ---- the bundled file -------------------------------------------------------------------------

_ROWS_KEY = "token_embedding.rows"
_IDS_KEY = "token_embedding.ids"
_TABLE_KEY = "token_embedding.weight"


def grammar_token_ids(extra_texts: list[str] | tuple[str, ...] = ()) -> list[int]:
    """Token ids the ``shapes`` grammar (plus ``extra_texts``) can produce, with start/end/pad."""
    import open_clip

    from studio.ml import shapes

    texts = list(shapes.vocabulary()) + list(extra_texts)
    ids = set(open_clip.tokenize(texts, context_length=77).flatten().tolist())
    return sorted(ids)


def export_bundled_clip(checkpoint_dir: str | Path, out_path: str | Path, keep_ids: list[int] | None = None) -> dict:
    """Write the small fp16 file shipped with Studio from a training run's checkpoint.

    ``keep_ids``: token ids whose embedding rows are stored (default: the ids the run trained,
    which it records, those of every text of its dataset where it can still be read, and the
    ``shapes`` grammar; every other row becomes the mean row).
    Returns a summary with the size in bytes and the number of rows kept.
    """
    from studio.ml.train_clip import dataset_texts, load_checkpoint_model
    from studio.plumbing import save_safetensors

    model, config_name, info = load_checkpoint_model(checkpoint_dir)
    if not keep_ids:
        # what the run trained (recorded as it went), and every text of its dataset where it can
        # still be read: a held-out word's row is untrained but not noise to the text tower (the
        # mean row in its place cost an emoji CLIP a third of its held-out accuracy)
        dataset = (info.get("config") or {}).get("dataset", "shapes")
        try:
            texts = dataset_texts(dataset, config_name)
        except (ValueError, StudioError):
            if not info.get("token_ids"):
                raise
            texts = []
        keep_ids = sorted(set(info.get("token_ids") or ()) | set(grammar_token_ids(texts)))
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    ids = torch.tensor(sorted(set(keep_ids)), dtype=torch.int64)
    table = state.pop(_TABLE_KEY)
    state[_ROWS_KEY] = table[ids].contiguous()
    state[_IDS_KEY] = ids
    metadata = {
        "format": "studio-clip-bundled-1",
        "config_name": config_name,
        "config": json.dumps(CONFIGS[config_name]),
        "vocab_size": str(table.shape[0]),
        "step": str(info.get("step", "")),
    }
    out_path = Path(out_path)
    save_safetensors(out_path, state, metadata)
    return {"path": str(out_path), "bytes": out_path.stat().st_size, "rows_kept": int(ids.numel()), "config": config_name,
            "step": info.get("step"), "dataset": (info.get("config") or {}).get("dataset", "shapes")}


def load_bundled_clip(path: str | Path) -> torch.nn.Module:
    """Rebuild a standard open_clip model (fp32, eval mode) from an exported bundled file."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if metadata.get("format") != "studio-clip-bundled-1":
        raise ValueError(f"{path}: not a Studio bundled CLIP file")
    name = metadata["config_name"]
    if name not in CONFIGS:  # a file from a newer Studio: trust its own config
        CONFIGS[name] = json.loads(metadata["config"])  # registered with open_clip by create_small_clip
    from studio.ml.skip_init import without_random_init

    with without_random_init():  # the strict load below sets every weight
        model = create_small_clip(name)
    rows, ids = state.pop(_ROWS_KEY).float(), state.pop(_IDS_KEY).long()
    table = rows.mean(dim=0, keepdim=True).repeat(int(metadata["vocab_size"]), 1)
    table[ids] = rows
    state[_TABLE_KEY] = table
    expected = model.state_dict()
    # assign: the file's tensors (converted to the model's dtype) become the parameters, no second copy
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.eval()
