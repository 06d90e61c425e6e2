"""Studio hooks for GALIP: the models this plugin provides and its commands.

Cheap by design, since every `studio` command that lists models or commands loads it: reading
model cards is JSON only; the generator module (and torch) is imported when a model is first
used (the spec's factory, then ``load``), the commands when a command runs.
"""

from __future__ import annotations

import copy
import functools
import logging

from studio.api import GenerationError, ModelSpec, Param, hookimpl, load_settings

from .kernels import CPU_KERNELS
from .model_dir import BUNDLED_ID, BUNDLED_WEIGHTS, ModelCard, bundled_card, imported_cards

log = logging.getLogger(__name__)

#: ``interp_seed_to`` when the noise stays at the request's own seed.
NO_SEED = -1
#: What an interpolation moves: the noise (between seeds), the text (between prompts), or both.
INTERPOLATION_MODES = ("both", "noise", "text")


@functools.cache
def version() -> str:
    """This plugin's version, recorded with every image (read once, when a model is first built)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("studio-galip")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"

PARAMS = (
    Param("image", "image", "", help="A picture whose CLIP image embedding conditions the image (stored under inputs/ at submit)."),
    Param("image_strength", "float", 1.0, 0.0, 1.0,
          help="With image: 0 uses only the prompt, 1 only the picture, in between mixes them."),
    Param("interp_to", "str", "",
          help="Interpolation: the prompt to move towards (its sentence embedding is lerped in by interp_t)."),
    Param("interp_seed_to", "int", NO_SEED, NO_SEED, 2**63 - 1,
          help=f"Interpolation: the seed whose noise to move towards (slerp by interp_t); {NO_SEED}: none."),
    Param("interp_t", "float", 0.0, 0.0, 1.0,
          help="Interpolation: how far towards interp_to / interp_seed_to (0: the prompt and seed, 1: the targets)."),
    Param("cpu_kernels", "str", "fast", choices=CPU_KERNELS, unset_means="exact",
          help="CPU kernels: fast (Winograd for the large 3x3 convolutions, fused modulation: faster at "
               "batch 1, pixels within one level of exact) or exact (the plain ops, as images made "
               "before this parameter)."),
)


def _factory(card: ModelCard):
    def build():
        from .generator import GalipGenerator

        return GalipGenerator(card.source(), plugin_version=version())

    return build


def _bundled_missing():
    raise GenerationError(
        f"the bundled galip weights are not installed ({BUNDLED_WEIGHTS.name} missing from the studio-galip "
        "package); reinstall studio-galip, or import weights with `studio models import galip`"
    )


def card_figures(data: dict) -> dict:
    """What `studio models show` prints from a card: its evaluation and how it was trained."""
    figures = {key: data[key] for key in ("eval", "dataset", "steps", "clip_arch", "batch_size") if key in data}
    if "seconds_this_run" in data:
        figures["train_minutes"] = round(data["seconds_this_run"] / 60, 1)
    return figures


def _spec(card: ModelCard | None, model_id: str, description: str) -> ModelSpec:
    size = (card.data.get("config") or {}).get("image_size", 224) if card else 64
    data = card.data if card else {}
    vocabulary = data.get("vocabulary")
    return ModelSpec(
        id=model_id,
        plugin="galip",
        factory=_factory(card) if card else _bundled_missing,
        params=PARAMS,
        weights=str(card.weights) if card else f"(not installed) {BUNDLED_WEIGHTS}",
        description=description,
        max_batch=32 if size <= 128 else 4,
        vocabulary=tuple(vocabulary) if vocabulary else None,
        draws=data.get("draws", ""),
        licence=data.get("licence", "") or card.terms if card else "",
        card=card_figures(data),
        weights_sha256=data.get("weights_sha256", "") if card else "",
    )


@hookimpl
def register_models(register):
    card = bundled_card()
    register(_spec(card, BUNDLED_ID, "GALIP trained on `shapes` with the bundled small CLIP (64px)"))
    cards, problems = imported_cards(load_settings().models_dir)
    for problem in problems:
        log.warning("skipping GALIP model: %s", problem)
    for card in cards:
        size = card.data.get("config", {}).get("image_size", "?")
        source = card.data.get("source", {}).get("checkpoint", "?")
        register(_spec(card, card.id, f"GALIP imported from {source} ({size}px)"))


@hookimpl
def register_commands(cli):
    from .commands import galip_group, import_command, train_command

    cli.add_command(galip_group)
    train = cli.get_command(None, "train") if hasattr(cli, "get_command") else None
    if train is not None and hasattr(train, "add_command"):
        # `studio train galip`: the spelling before `studio galip train`, kept for scripts, left out of --help.
        alias = copy.copy(train_command)
        alias.hidden = True
        train.add_command(alias, name="galip")
    models = cli.get_command(None, "models") if hasattr(cli, "get_command") else None
    imp = models.get_command(None, "import") if models is not None and hasattr(models, "get_command") else None
    if imp is not None and hasattr(imp, "add_command"):
        imp.add_command(import_command, name="galip")
    else:
        galip_group.add_command(import_command, name="import")
