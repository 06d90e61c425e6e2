"""The public plugin API: everything a plugin may use from Studio's core, in one module.

Plugins import from here (and from ``studio.ml`` for shared torch code) and nothing else of
the core, so the core can change its insides without breaking them::

    from studio.api import ModelSpec, Param, Result, hookimpl

    @hookimpl
    def register_models(register):
        register(ModelSpec(id="my-model", plugin="my-plugin", factory=MyGenerator))

Importing this module is cheap (no database, no torch): the engine and the executors are
loaded on first use of :func:`engine`, :func:`dispatch`, ``Engine``, ``JobInfo`` or ``ImageInfo``.
Documented in docs/plugins.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from studio.config import Settings, load_settings
from studio.errors import (
    ConfigError,
    GenerationError,
    InputError,
    JobCanceled,
    NotFound,
    ParamError,
    StudioError,
    UnknownDataset,
    UnknownModel,
    UsageError,
    WeightsError,
)
from studio.generators import (
    DatasetSpec,
    Generator,
    ModelSpec,
    Param,
    ProgressCallback,
    Request,
    Result,
    prompt_cache,
    prompt_words,
)
from studio.canvas import is_near_blank
from studio.hookspecs import hookimpl
from studio.plumbing import (
    MetricsLog,
    TrainingRun,
    append_jsonl,
    atomic_dir,
    atomic_path,
    check_finite,
    hardware,
    load_checkpoint,
    one_line,
    restore_optimizer,
    save_checkpoint,
    save_safetensors,
    sha256_file,
    write_atomic,
)
from studio.plumbing import sha256_file_cached as _sha256_file_cached

if TYPE_CHECKING:
    from studio.engine import Engine
    from studio.records import ImageInfo, JobInfo

__all__ = [
    # the contract
    "hookimpl", "ModelSpec", "Param", "DatasetSpec", "Generator", "Request", "Result", "ProgressCallback",
    # settings
    "Settings", "load_settings",
    # errors
    "StudioError", "UsageError", "NotFound", "ConfigError", "GenerationError", "JobCanceled", "ParamError",
    "InputError", "UnknownModel", "UnknownDataset", "WeightsError",
    # jobs: engine access and dispatch
    "Engine", "JobInfo", "ImageInfo", "engine", "dispatch", "uses_broker",
    # inputs and datasets
    "resolve_input", "store_input", "open_dataset",
    # what an image holds, what a prompt says
    "is_near_blank", "prompt_words", "prompt_cache",
    # plumbing
    "atomic_path", "atomic_dir", "write_atomic", "sha256_file", "sha256_file_cached", "one_line", "load_checkpoint", "save_checkpoint",
    "restore_optimizer", "save_safetensors",
    "check_finite", "append_jsonl", "hardware", "MetricsLog", "TrainingRun", "without_random_init",
]

#: Names resolved on first use, so importing ``studio.api`` loads no database code.
_LAZY = {
    "Engine": "studio.engine",
    "JobInfo": "studio.records",
    "ImageInfo": "studio.records",
    "dispatch": "studio.executors",
    "uses_broker": "studio.executors",
    "resolve_input": "studio.inputs",
    "store_input": "studio.inputs",
    "open_dataset": "studio.ml.datasets",  # torch: loaded only when a dataset is opened
    "without_random_init": "studio.ml.skip_init",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'studio.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def engine(settings: Settings | None = None) -> "Engine":
    """An :class:`Engine` on the effective settings (or ``settings``): submit, wait, get, images..."""
    from studio.engine import Engine

    return Engine(settings or load_settings())


def sha256_file_cached(path) -> str:
    """A file's sha256, remembered in ``<home>/cache/sha256.json`` by path, size and mtime (see
    :func:`studio.plumbing.sha256_file_cached`); without a usable home, simply computed."""
    try:
        cache = load_settings().home / "cache" / "sha256.json"
    except Exception:  # noqa: BLE001 - no settings, no cache: the digest is still right
        cache = None
    return _sha256_file_cached(path, cache)
