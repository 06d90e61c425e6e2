"""Studio's own hook implementations: the datasets every install has.

Registered through the same hooks as any plugin. Nothing here imports torch at import time;
the ML layer (``studio.ml``) is imported inside the functions that need it.
"""

from __future__ import annotations

from studio.generators import DatasetSpec
from studio.hookspecs import hookimpl


def _shapes(**options):
    from studio.ml.datasets import builtin_dataset

    return builtin_dataset("shapes", **options)


def _emoji(**options):
    from studio.ml.datasets import builtin_dataset

    return builtin_dataset("emoji", **options)


def _folder(path: str = "", **options):
    from studio.ml.datasets import builtin_dataset

    return builtin_dataset(f"folder:{path}", **options)


@hookimpl
def register_datasets(register):
    register(
        DatasetSpec(
            name="shapes",
            plugin="studio",
            factory=_shapes,
            description="procedural coloured shapes with exact captions (generated from a seed, nothing stored)",
        )
    )
    register(
        DatasetSpec(
            name="emoji",
            plugin="studio",
            factory=_emoji,
            description="named emoji artwork in three styles, built from installed packages (pip install 'studio[emoji]')",
        )
    )
    register(
        DatasetSpec(
            name="folder",
            plugin="studio",
            factory=_folder,
            description="folder:PATH, images with captions (image.png + image.txt, or captions.jsonl/.csv)",
        )
    )
