"""Studio hooks of the CLIP-GEN plugin (entry point ``clip-gen``). Imports nothing heavy.

Models: ``clip-gen`` (the bundled default, from ``studio_clip_gen/weights``), one more bundled
``clip-gen-NAME`` per model folder shipped as ``studio_clip_gen/weights-NAME`` (a model of
another domain, e.g. ``weights-emoji``), and one ``clip-gen/NAME`` per folder imported under
``<models_dir>/clip-gen/NAME``.
"""

from __future__ import annotations

import json
from pathlib import Path

from studio.api import GenerationError, ModelSpec, Param, hookimpl

BUNDLED_DIR = Path(__file__).parent / "weights"
#: Where further bundled models live: ``weights-NAME`` registers as ``clip-gen-NAME``.
PACKAGE_DIR = Path(__file__).parent
MODEL_JSON = "model.json"

PARAMS = (
    Param("temperature", "float", 1.0, min=0.05, max=5.0, help="softmax temperature of token sampling"),
    Param("top_k", "int", 0, min=0, max=65536, help="sample among the k most likely codes (0: all)"),
    Param("top_p", "float", 1.0, min=0.01, max=1.0, help="nucleus sampling mass (1: off)"),
    # re-ranking is part of CLIP-GEN's method: on the bundled model 8 candidates lift `studio eval`'s
    # colour/relation from 0.75/0.48 to 0.96/0.87 (model card, n=256); candidates=1 is the plain sampler
    Param("candidates", "int", 8, min=1, max=64, help="images sampled per request, the best kept: ranked by the claims classifier for prompts of the shapes grammar, by CLIP otherwise (1: no re-ranking)"),
    Param("keep", "int", 1, min=1, max=16, help="best candidates shown (more than 1: a row of them)"),
    Param("image", "image", "", help="condition on this image's CLIP embedding instead of the prompt"),
    Param("guidance", "float", 1.0, min=0.0, max=20.0, unset_means=1.0,
          help="classifier-free guidance on the CLIP condition (1: off; more follows the prompt more closely)"),
    # images made before this parameter existed were ranked by CLIP alone (unset_means)
    Param("skip_blank", "bool", True, unset_means=False,
          help="re-ranking keeps a near-blank candidate only when every candidate is near-blank"),
)
DEFAULTS = {p.name: p.default for p in PARAMS}


def params_for(folder: Path, card: dict) -> tuple[Param, ...]:
    """The parameters of the model in ``folder``: its card's ``defaults`` replace the plugin's, and a
    model whose transformer has no null condition (trained without ``--cond-drop``; ``model.json``
    says) takes guidance 1 only, so asking for more is refused at submit, before a job is stored."""
    from dataclasses import replace

    defaults = card.get("defaults") if isinstance(card.get("defaults"), dict) else {}
    try:
        null_condition = bool(json.loads((folder / MODEL_JSON).read_text()).get("null_condition"))
    except (OSError, ValueError, AttributeError):
        null_condition = False
    out = []
    for p in PARAMS:
        if p.name == "guidance" and not null_condition:
            p = replace(p, min=None, max=None, choices=(1.0,),
                        help=p.help + "; this model was trained without a null condition, so 1 only")
        if p.name in defaults and p.type != "image":
            try:
                p = replace(p, default=p.coerce(defaults[p.name]))
            except ValueError:
                pass  # a card with a bad default keeps the plugin's
        out.append(p)
    return tuple(out)


def bundled_domains() -> list[Path]:
    """The shipped model folders beside the default one (``weights-NAME`` holding a model.json)."""
    return sorted(p for p in PACKAGE_DIR.glob("weights-*") if (p / MODEL_JSON).is_file()
                  and p.name.removeprefix("weights-").replace("-", "").isalnum())


def imported_root() -> Path | None:
    from studio.api import ConfigError, load_settings

    try:
        return load_settings().models_dir / "clip-gen"
    except ConfigError:
        return None


def _factory(model_id: str, root: Path):
    def build():
        if not (root / MODEL_JSON).is_file():
            if root == BUNDLED_DIR:
                raise GenerationError(
                    f"the bundled clip-gen weights are not installed ({BUNDLED_DIR} holds no {MODEL_JSON}): reinstall "
                    "studio-clip-gen, or import a model with `studio models import clip-gen NAME ...`"
                )
            raise GenerationError(f"model {model_id!r}: {root / MODEL_JSON} is missing")
        from studio_clip_gen.generator import ClipGenGenerator

        return ClipGenGenerator(model_id, root)

    return build


def read_card(folder: Path) -> dict:
    """``model_card.json`` of a model folder (JSON only: registration stays cheap); {} when absent."""
    try:
        return json.loads((folder / "model_card.json").read_text())
    except (OSError, ValueError):
        return {}


def card_details(card: dict) -> dict:
    """The ModelSpec fields a card fills: vocabulary, what it draws, licence, figures."""
    figures = {key: card[key] for key in ("eval", "vqgan", "data", "defaults") if key in card}
    training = card.get("training") or {}
    for part in ("vqgan", "transformer"):
        if isinstance(training.get(part), dict):
            figures[f"{part}_training"] = {k: training[part][k] for k in ("steps", "minutes") if k in training[part]}
    vocabulary = card.get("vocabulary")
    return {"vocabulary": tuple(vocabulary) if vocabulary else None, "draws": card.get("draws", ""),
            "licence": card.get("licence", ""), "card": figures}


@hookimpl
def register_models(register):
    bundled = (BUNDLED_DIR / MODEL_JSON).is_file()
    register(
        ModelSpec(
            id="clip-gen",
            plugin="clip-gen",
            factory=_factory("clip-gen", BUNDLED_DIR),
            params=params_for(BUNDLED_DIR, read_card(BUNDLED_DIR)),
            weights="bundled (studio_clip_gen/weights)" if bundled else "bundled weights not installed",
            description="CLIP-GEN: VQGAN tokens sampled by a transformer conditioned on CLIP (trained on images only)",
            max_batch=16,
            **card_details(read_card(BUNDLED_DIR)),
        )
    )
    for folder in bundled_domains():
        card = read_card(folder)
        model_id = "clip-gen-" + folder.name.removeprefix("weights-")
        register(
            ModelSpec(
                id=model_id,
                plugin="clip-gen",
                factory=_factory(model_id, folder),
                params=params_for(folder, card),
                weights=f"bundled (studio_clip_gen/{folder.name})",
                description=f"CLIP-GEN trained on {card.get('dataset', folder.name.removeprefix('weights-'))}"
                            + (f": draws {card['draws']}" if card.get("draws") else ""),
                max_batch=16,
                **card_details(card),
            )
        )
    root = imported_root()
    if root is None or not root.is_dir():
        return
    for folder in sorted(p for p in root.iterdir() if (p / MODEL_JSON).is_file()):
        card = read_card(folder)
        register(
            ModelSpec(
                id=f"clip-gen/{folder.name}",
                plugin="clip-gen",
                factory=_factory(f"clip-gen/{folder.name}", folder),
                params=params_for(folder, card),
                weights=f"imported ({folder})",
                description=f"CLIP-GEN model imported as {folder.name}",
                max_batch=16,
                **card_details(card),
            )
        )


@hookimpl
def register_commands(cli):
    from studio_clip_gen.commands import clip_gen_group, import_command

    cli.add_command(clip_gen_group)
    models = cli.get_command(None, "models")
    importers = models.get_command(None, "import") if models is not None and hasattr(models, "get_command") else None
    if importers is not None:
        importers.add_command(import_command)
