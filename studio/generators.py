"""The generator contract: what a model plugin provides and what the engine hands it.

Kept free of heavy imports so the CLI can list and validate models without loading torch.
A plugin registers a :class:`ModelSpec`; the engine builds the :class:`Generator` lazily
through its factory the first time a job needs it, once per process.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from studio.errors import GenerationError, JobCanceled, ParamError

#: Called by a generator after each step: ``progress(done, total)``. The engine's callback
#: raises :class:`JobCanceled` when the job was canceled, so a generator stops at the next step
#: boundary simply by calling it.
ProgressCallback = Callable[[int, int], None]




#: ``image``: a file path at submit time, stored by the engine as ``inputs/<sha256>.png`` (see
#: ``studio.inputs``); generators open it with ``studio.inputs.resolve_input``.
_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "image": str}


@dataclass(frozen=True)
class Param:
    """One entry of a model's parameter schema; used to validate ``--param key=value``."""

    name: str
    type: str = "float"  # one of int, float, str, bool, image
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: Sequence[Any] | None = None
    help: str = ""
    #: The value that images made before this parameter existed were made with. A stored recipe
    #: without the parameter is regenerated (``regen``, ``vary``, ``--verify``) with this value,
    #: not ``default``, and a job's recipe leaves the parameter out at this value, so old images
    #: come out as they were, recipe and file alike. None: the default holds for them too.
    unset_means: Any = None

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"param {self.name!r}: unknown type {self.type!r}")

    def coerce(self, value: Any) -> Any:
        """Turn a CLI string (or a JSON value) into this parameter's type, checking bounds."""
        kind = _TYPES[self.type]
        if isinstance(value, str):
            raw = value.strip()
            try:
                if kind is bool:
                    low = raw.lower()
                    if low not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                        raise ValueError
                    value = low in {"1", "true", "yes", "on"}
                elif kind is int:
                    value = int(raw)
                elif kind is float:
                    value = float(raw)
                else:
                    value = raw
            except ValueError:
                raise ParamError(f"parameter {self.name!r} must be {self.type}, got {raw!r}") from None
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ParamError(f"parameter {self.name!r} must be {self.type}, got {value!r}")
        if kind is float and (value != value or value in (float("inf"), float("-inf"))):  # NaN, inf
            raise ParamError(f"parameter {self.name!r} must be a number (finite), got {value}")
        if self.min is not None and value < self.min:
            raise self._out_of_range(f"must be >= {self.min}, got {value}")
        if self.max is not None and value > self.max:
            raise self._out_of_range(f"must be <= {self.max}, got {value}")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise self._out_of_range(f"must be one of {allowed}, got {value!r}")
        return value

    def _out_of_range(self, text: str) -> ParamError:
        """The error for a value of the right type outside what the model takes: its help says why."""
        return ParamError(f"parameter {self.name!r} {text}" + (f" ({self.help})" if self.help else ""))


@dataclass(frozen=True)
class Request:
    """One image to make. Each image depends only on its own request, so batching is free."""

    prompt: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    index: int = 0  # position within its job


@dataclass
class Result:
    """One generated image (a PIL image, RGB) and anything the recipe should carry about it."""

    image: Any
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """What a model plugin's factory returns.

    ``load`` is called once per process (the engine caches the loaded generator);
    ``generate`` receives a batch of requests and must return one result per request, in
    order, with each image a function of its own request only; ``describe`` goes into every
    recipe (model id, plugin version, weights sha256, resolution, ...).
    """

    def load(self, device: str) -> None: ...

    def generate(self, requests: list[Request], progress: ProgressCallback) -> list[Result]: ...

    def describe(self) -> dict[str, Any]: ...


def prompt_words(text: str) -> list[str]:
    """The words of a prompt as a model's vocabulary counts them: lower case letters (an inner
    apostrophe kept), no digits or punctuation."""
    return re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", text.lower())


#: Prompt embeddings a loaded model keeps (the least recently used dropped first).
PROMPT_CACHE_SIZE = 256


def prompt_cache(encode: Callable[[str], Any], size: int = PROMPT_CACHE_SIZE) -> Callable[[str], Any]:
    """``encode(prompt)`` remembered for the ``size`` most recently used prompts.

    Repeated prompts (a batch of seeds, a re-ranking pass, a worker's next job) skip the text
    encoder. ``encode`` must take one prompt at a time, so that an embedding is the same whether
    it comes from the cache or not (a batched text encoder can differ in the last bits).
    """
    return functools.lru_cache(maxsize=size)(encode)


@dataclass(frozen=True)
class ModelSpec:
    """A model as a plugin registers it. Nothing heavy happens until ``factory`` is called."""

    id: str
    plugin: str
    factory: Callable[[], Generator]
    params: tuple[Param, ...] = ()
    weights: str = ""  # where the weights come from, for `studio models`
    description: str = ""
    max_batch: int = 16  # the largest batch the engine hands to generate()
    #: The words the model was trained on (lower case), or None for an open vocabulary. A prompt
    #: with other words still runs; `studio submit` names them in one line.
    vocabulary: tuple[str, ...] | None = None
    draws: str = ""  # what the model can draw, in a few words ("coloured shapes")
    licence: str = ""  # the weights' licence or terms
    weights_sha256: str = ""  # the expected sha256 of the file named in ``weights`` (checked by `studio doctor`)
    #: Figures from the model card (evaluation, training), shown by `studio models show`.
    card: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def unknown_words(self, prompt: str) -> list[str]:
        """The words of ``prompt`` outside the model's vocabulary, in order, each once."""
        if self.vocabulary is None:
            return []
        known = set(self.vocabulary)
        unknown: list[str] = []
        for word in prompt_words(prompt):
            if word not in known and word not in unknown:
                unknown.append(word)
        return unknown

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params) or "none"
        raise ParamError(f"model {self.id!r} has no parameter {name!r} (known: {known})")

    def validate_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Return the full parameter dict: defaults filled in, every given value checked.

        A parameter at its ``unset_means`` value is left out: a recipe without it means that
        value, so an image made before the parameter existed regenerates to the same recipe
        (and the same file) as it was stored with.
        """
        values = {p.name: p.default for p in self.params}
        for name, raw in given.items():
            values[name] = self.param(name).coerce(raw)
        for p in self.params:
            if p.unset_means is not None and values.get(p.name) == p.unset_means:
                del values[p.name]
        return values


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset usable by the trainers (``studio train ... --dataset NAME``).

    ``factory(**options)`` builds it (lazily: it may import torch); items are dicts with
    ``image`` (float tensor [3,H,W] in [-1,1]), ``caption`` (str) and ``attrs`` (dict or None).
    """

    name: str
    plugin: str
    factory: Callable[..., Any]
    description: str = ""
