"""Studio's own hook implementations: the datasets and the CLIP commands every install has.

Registered through the same hooks as any plugin. Nothing here imports torch at import time;
the ML layer (``studio.ml``) is imported inside the functions that need it.
"""

from __future__ import annotations

from studio.generators import DatasetSpec
from studio.hookspecs import hookimpl


def _open(name: str):
    def factory(**options):
        from studio.ml.datasets import open_dataset

        return open_dataset(name, **options)

    return factory


@hookimpl
def register_datasets(register):
    register(
        DatasetSpec(
            name="shapes",
            plugin="studio",
            factory=_open("shapes"),
            description="procedural coloured shapes with exact captions (generated from a seed, nothing stored)",
        )
    )
    register(
        DatasetSpec(
            name="emoji",
            plugin="studio",
            factory=_open("emoji"),
            description="named emoji artwork in three styles, built from installed packages (pip install 'studio[emoji]')",
        )
    )
    register(
        DatasetSpec(
            name="folder",
            plugin="studio",
            factory=lambda path, **options: _open(f"folder:{path}")(**options),
            description="folder:PATH, images with captions (image.png + image.txt, or captions.jsonl/.csv)",
        )
    )


@hookimpl
def register_commands(cli):
    from studio.ml_commands import eval_command, train_group

    cli.add_command(train_group)
    cli.add_command(eval_command)
