"""GALIP models on disk: the bundled default and the ones imported into the models folder.

Each model is a folder (or, for the bundled one, the package's ``weights/`` folder) holding a
``model.json`` card, the generator weights in Studio's safetensors format and a reference to
its CLIP file. Reading a card is cheap and imports no torch, so models can be listed at CLI
start; importing converts an official checkpoint once so later loads are fast and pickle-free.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .generator import GalipSource


CARD = "model.json"
WEIGHTS = "galip.safetensors"
BUNDLED_ID = "galip"
BUNDLED_DIR = Path(__file__).parent / "weights"
BUNDLED_CARD = BUNDLED_DIR / "galip-shapes.json"
BUNDLED_WEIGHTS = BUNDLED_DIR / "galip-shapes.safetensors"

#: The released official weights' terms (github tobran/GALIP), shown at import and recorded.
OFFICIAL_TERMS = (
    "Official GALIP weights: the repository's LICENSE file is MIT, but its README states the released "
    "checkpoints are CC BY-NC-SA 4.0, for academic (non-commercial) use only. Studio's code is its own; "
    "the terms of imported weights are the user's responsibility."
)

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ModelImportError(ValueError):
    """An import that cannot proceed; the message is one line, shown to the user."""


@dataclass(frozen=True)
class ModelCard:
    """What ``model.json`` says about one GALIP model."""

    id: str
    folder: Path
    data: dict[str, Any]

    @property
    def weights(self) -> Path:
        return self.folder / self.data.get("weights", WEIGHTS)

    @property
    def clip_arch(self) -> str:
        return self.data["clip"]["arch"]

    @property
    def clip_file(self) -> Path:
        """The CLIP file: absolute, relative to the card, or inside an installed package.

        ``{"package": "studio.ml", "file": "weights/clip-small.safetensors"}`` lets the bundled model
        use a CLIP file that another distribution ships, wherever it is installed.
        """
        clip = self.data["clip"]
        if clip.get("package"):
            from importlib.resources import files

            return Path(str(files(clip["package"]).joinpath(clip["file"])))
        path = Path(clip["file"])
        return path if path.is_absolute() else self.folder / path

    @property
    def terms(self) -> str:
        return self.data.get("terms", "")

    def source(self) -> GalipSource:
        from .generator import GalipSource

        return GalipSource(self.id, self.weights, self.clip_arch, self.clip_file,
                           self.data.get("weights_sha256"), self.data["clip"].get("sha256"))


def model_id_for(name: str) -> str:
    """Imported models are ``galip/NAME``: the plugin, then the folder under ``models/galip/``, as
    every plugin names what it imports (CLIP-GEN's are ``clip-gen/NAME``)."""
    return f"galip/{name}"


def legacy_model_id(name: str) -> str:
    """The id of a model imported before the card recorded one (``galip-NAME``): its images name it
    in their recipes, so it keeps that id and they keep verifying."""
    return name if name.startswith("galip-") else f"galip-{name}"


def read_card(path: Path, model_id: str | None = None) -> ModelCard:
    """A model card; its id is ``model_id``, else ``galip/NAME`` when the card records that id (an
    import since ids were unified), else the legacy id of its folder."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "clip" not in data:
        raise ValueError(f"{path}: not a GALIP model card")
    if model_id is None:
        name = path.parent.name
        model_id = model_id_for(name) if data.get("id") == model_id_for(name) else legacy_model_id(name)
    return ModelCard(model_id, path.parent, data)


def bundled_card() -> ModelCard | None:
    """The default model's card, or None when its weights are not installed."""
    if not (BUNDLED_CARD.is_file() and BUNDLED_WEIGHTS.is_file()):
        return None
    card = read_card(BUNDLED_CARD, BUNDLED_ID)
    return ModelCard(card.id, card.folder, {**card.data, "weights": BUNDLED_WEIGHTS.name})


def imported_cards(models_dir: Path) -> tuple[list[ModelCard], list[str]]:
    """Cards under ``models_dir/galip/*``; unreadable ones are reported, never fatal."""
    cards, problems = [], []
    root = Path(models_dir) / "galip"
    if not root.is_dir():
        return cards, problems
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        card = folder / CARD
        if not card.is_file():
            continue
        try:
            cards.append(read_card(card))
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"{card}: {exc}")
    return cards, problems


RUN_CARD = "model_card.json"
#: The CLIP of the official GALIP checkpoints, assumed when ``--clip`` is given without an architecture.
OFFICIAL_CLIP_ARCH = "ViT-B-32-quickgelu"


def run_sources(run_folder: Path | None, checkpoint: Path | None, clip_file: Path | None,
                clip_arch: str | None) -> tuple[Path, Path, str]:
    """The checkpoint, CLIP file and CLIP architecture of an import.

    A training run folder (``studio galip train --out``) holds ``galip.safetensors`` and a
    ``model_card.json`` that records the CLIP it was trained with, so it imports as it is; the same
    card is found beside a ``--checkpoint`` taken from a run folder. ``--clip``/``--clip-arch`` given
    explicitly win over the card.
    """
    if run_folder is not None and checkpoint is not None:
        raise ModelImportError("give a run folder or --checkpoint FILE, not both")
    if run_folder is None and checkpoint is None:
        raise ModelImportError("give a training run folder or --checkpoint FILE")
    if run_folder is not None:
        checkpoint = Path(run_folder) / WEIGHTS
        if not checkpoint.is_file():
            raise ModelImportError(f"{run_folder}: no {WEIGHTS} (is the training run finished?)")
    card_path = Path(checkpoint).parent / RUN_CARD
    meta: dict[str, Any] = {}
    if clip_file is None or clip_arch is None:
        if card_path.is_file():
            try:
                meta = json.loads(card_path.read_text())
            except (OSError, ValueError) as exc:
                raise ModelImportError(f"{card_path}: unreadable ({exc})") from None
        elif run_folder is not None:
            raise ModelImportError(f"{run_folder}: no {RUN_CARD} (is the training run finished?)")
    if clip_file is None:
        if not meta.get("clip_file"):
            raise ModelImportError("give --clip FILE (the CLIP the checkpoint was trained with)")
        clip_file = Path(meta["clip_file"])
        if not clip_file.is_absolute() and not clip_file.is_file():
            clip_file = card_path.parent / clip_file  # an older card, written with the path as typed
        if not clip_file.is_file():
            raise ModelImportError(f"the run's CLIP file {clip_file} is missing; give --clip FILE")
    if clip_arch is None:
        clip_arch = meta.get("clip_arch") or _guess_arch(clip_file)
    return Path(checkpoint), Path(clip_file), clip_arch


def _guess_arch(clip_file: Path) -> str:
    """The CLIPs Studio ships are in its small-CLIP format; any other file is taken for the official CLIP."""
    from studio.ml import BUNDLED_CLIP_ARCH, installed_clip_ref

    return BUNDLED_CLIP_ARCH if installed_clip_ref(clip_file) else OFFICIAL_CLIP_ARCH


def with_averaged_generator(weights) -> str:
    """Put a training checkpoint's moving average of G (``--ema``) in place of G; says so, or "".

    A run with an average ships the average, so its checkpoint imports as what the run would ship.
    """
    ema = weights.extra.get("netG_ema")
    if not isinstance(ema, dict) or not ema:
        return ""
    weights.states["netG"] = {**weights.states["netG"], **{k: v.float() for k, v in ema.items()}}
    decay = (weights.extra.get("meta") or {}).get("ema")
    return f"the training run's moving average of the generator (decay {decay})"


def import_model(name: str, checkpoint: Path, clip_file: Path, clip_arch: str, models_dir: Path,
                 copy_clip: bool = False, force: bool = False) -> ModelCard:
    """Convert an official (or Studio) GALIP checkpoint into ``models_dir/galip/NAME``.

    The CLIP file is checked to fit, the generator is loaded strictly, and the weights are
    written as safetensors (with the frozen CLIP trunk only if the checkpoint's copy differs
    from the CLIP file's). ``model.json`` records the architecture, both sha256s and the
    weights' terms. The CLIP file is referenced in place unless ``copy_clip``.
    """
    from studio.api import WeightsError, atomic_path, sha256_file

    from .checkpoints import check_clip_fits, infer_config, load_into, read_weights, save_studio, trunk_matches_clip
    from .model import build_nets

    if not _NAME.match(name):
        raise ModelImportError(f"model name {name!r}: use lowercase letters, digits, '.', '_' or '-'")
    dest = Path(models_dir) / "galip" / name
    if (dest / CARD).exists() and not force:
        raise ModelImportError(f"{dest} already exists (use --force to replace it)")
    model_id = model_id_for(name)
    with contextlib.suppress(OSError, ValueError, KeyError):
        model_id = read_card(dest / CARD).id  # a replaced model keeps its id: images made with it name it
    checkpoint, clip_file = Path(checkpoint).absolute(), Path(clip_file).absolute()
    try:
        from .generator import open_clip_model

        clip = open_clip_model(clip_arch, clip_file)
        weights = read_weights(checkpoint)
        averaged = with_averaged_generator(weights)
        cfg = weights.config or infer_config(weights, clip, checkpoint)
        check_clip_fits(cfg, clip, f"{clip_arch} ({clip_file})")
        nets = build_nets(cfg, clip, with_d=False)
        same_trunk = trunk_matches_clip(weights.states["netG"], nets.G)
        load_into(nets, weights, checkpoint)
    except WeightsError as exc:
        raise ModelImportError(str(exc)) from None

    dest.mkdir(parents=True, exist_ok=True)
    official = weights.config is None
    data: dict[str, Any] = {
        "id": model_id,
        "arch": "galip",
        "config": cfg.to_dict(),
        "weights": WEIGHTS,
        "clip": {"arch": clip_arch, "file": str(clip_file), "sha256": sha256_file(clip_file)},
        "source": {"checkpoint": str(checkpoint), "sha256": sha256_file(checkpoint),
                   "format": "official" if official else "studio"},
        "trunk": "clip file" if same_trunk else "included (differs from the CLIP file)",
        "terms": OFFICIAL_TERMS if official else weights.meta.get("terms", ""),
        "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if averaged:
        data["generator"] = averaged
    from studio.ml import installed_clip_ref

    shipped = installed_clip_ref(clip_file)
    if shipped and not copy_clip:
        # Named by package, as the bundled model does, so the card survives Studio being reinstalled.
        data["clip"] = {"arch": clip_arch, **shipped, "sha256": data["clip"]["sha256"]}
    if copy_clip:
        target = dest / f"clip{clip_file.suffix}"
        shutil.copyfile(clip_file, target)
        data["clip"]["file"] = target.name
    data["weights_sha256"] = save_studio(dest / WEIGHTS, nets, meta={"terms": data["terms"]},
                                         include_trunk=not same_trunk)
    with atomic_path(dest / CARD) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
    return ModelCard(model_id, dest, data)
