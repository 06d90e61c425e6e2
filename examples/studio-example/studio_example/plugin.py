"""The example plugin's hooks: a generator (``example-stripes``), a dataset and a command.

Everything comes from ``studio.api``, the one module a plugin may import from Studio's core.
Nothing heavy is imported here: Pillow loads when an image is made, click when the command
is added (the CLI has loaded it by then).
"""

from __future__ import annotations

import hashlib

from studio.api import DatasetSpec, GenerationError, ModelSpec, Param, Result, hookimpl

PLUGIN = "example"
MODEL_ID = "example-stripes"


def stripe_colours(prompt: str, seed: int, count: int) -> list[tuple[int, int, int]]:
    """``count`` colours that depend only on the prompt and the seed."""
    digest = hashlib.sha256(f"{prompt}\0{seed}".encode()).digest()
    return [tuple(digest[3 * i: 3 * i + 3]) for i in range(count)]


class StripesGenerator:
    """Horizontal stripes whose colours come from (prompt, seed): the smallest honest Generator."""

    def load(self, device: str) -> None:
        self.device = device  # nothing to load: no weights

    def describe(self) -> dict:
        return {"model": MODEL_ID, "weights_sha256": None, "resolution": "param:size", "dtype": "uint8"}

    def generate(self, requests, progress) -> list[Result]:
        from PIL import Image

        results = []
        for done, request in enumerate(requests, 1):
            size, stripes = request.params["size"], request.params["stripes"]
            if stripes > size:
                raise GenerationError(f"{stripes} stripes do not fit in {size} pixels")
            image = Image.new("RGB", (size, size))
            for i, colour in enumerate(stripe_colours(request.prompt, request.seed, stripes)):
                image.paste(colour, (0, i * size // stripes, size, (i + 1) * size // stripes))
            results.append(Result(image, extra={"stripes": stripes}))
            progress(done, len(requests))  # records progress; raises JobCanceled if the job was canceled
        return results


@hookimpl
def register_models(register):
    register(ModelSpec(
        id=MODEL_ID,
        plugin=PLUGIN,
        factory=StripesGenerator,
        params=(Param("size", "int", 32, min=4, max=512, help="image side in pixels"),
                Param("stripes", "int", 4, min=1, max=10, help="number of stripes")),
        weights="procedural (no weights)",
        description="example plugin: coloured stripes from the prompt and seed",
        max_batch=8,
    ))


def stripes_dataset(size: int = 32, length: int = 16, **_options):
    """Images of stripes captioned with their first colour's name: a dataset any trainer can open."""
    import torch

    items = []
    for i in range(length):
        colour = stripe_colours("dataset", i, 1)[0]
        rgb = torch.tensor(colour, dtype=torch.float32).div(127.5).sub(1.0)
        items.append({"image": rgb[:, None, None].expand(3, size, size).clone(), "caption": f"stripes {i}",
                      "attrs": None})
    return items


@hookimpl
def register_datasets(register):
    register(DatasetSpec(name="example-stripes", plugin=PLUGIN, factory=stripes_dataset,
                         description="example plugin: plain images, one per seed"))


@hookimpl
def register_commands(cli):
    import click

    @cli.group(name="example")
    def example_group() -> None:
        """The example plugin's commands."""

    @example_group.command(name="colours")
    @click.argument("prompt")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--stripes", type=click.IntRange(1, 10), default=4, show_default=True)
    def colours(prompt, seed, stripes) -> None:
        """Print the stripe colours PROMPT and SEED give (what `studio submit -m example-stripes` draws)."""
        for colour in stripe_colours(prompt, seed, stripes):
            click.echo("#%02x%02x%02x" % colour)


@hookimpl
def job_finished(job, images):
    """Events arrive after every job; a plugin could post a webhook here. This one does nothing."""
