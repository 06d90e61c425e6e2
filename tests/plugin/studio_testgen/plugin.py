"""A procedural generator that exercises the whole plugin contract without torch.

The image is a function of (prompt, seed, params) only: a base colour taken from a colour
word in the prompt (or a hash of it) with seeded noise, so tests can check determinism,
batch invariance and "the colour asked for is the colour drawn".
"""

from __future__ import annotations

import hashlib
import os
import random
import time

from studio.generators import DatasetSpec, GenerationError, ModelSpec, Param, Result
from studio.hookspecs import hookimpl

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (240, 120, 180),
}

FINISHED_EVENTS: list[tuple[str, str, int]] = []  # (job id, status, images) seen by job_finished
LOADS: list[str] = []  # devices load() was called with, to test caching


def base_colour(prompt: str) -> tuple[int, int, int]:
    for word in prompt.lower().split():
        if word in COLOURS:
            return COLOURS[word]
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


class TestGenerator:
    def __init__(self) -> None:
        self.device: str | None = None

    def load(self, device: str) -> None:
        self.device = device
        LOADS.append(device)

    def describe(self) -> dict:
        return {"model": "testgen", "weights_sha256": "0" * 64, "resolution": "param:size", "dtype": "uint8"}

    def generate(self, requests, progress):
        batch_log = os.environ.get("STUDIO_TESTGEN_BATCH_LOG")
        if batch_log:  # one line per generate() call: the prompts it was handed
            with open(batch_log, "a") as handle:
                handle.write("|".join(r.prompt for r in requests) + "\n")
        results = []
        steps = max(r.params["steps"] for r in requests)
        for step in range(steps):
            delay = max(r.params["delay"] for r in requests)
            if delay:
                time.sleep(delay)
            progress(step + 1, steps)
        for request in requests:
            fail = request.params["fail"]
            marker = os.environ.get("STUDIO_TESTGEN_MARKER")
            if fail == "error":
                raise GenerationError("testgen was asked to fail")
            if fail == "exception":
                raise RuntimeError("testgen crashed")
            if fail == "poison-word" and "poison" in request.prompt.split():
                raise GenerationError("testgen was handed the word poison")
            if fail == "exit" or (fail == "exit-once" and marker and not os.path.exists(marker)):
                if marker:
                    open(marker, "w").close()
                os._exit(17)  # a worker dying mid-job
            results.append(Result(image=render(request.prompt, request.seed, request.params["size"])))
        return results


def render(prompt: str, seed: int, size: int):
    rng = random.Random(seed)
    r, g, b = base_colour(prompt)
    pixels = bytearray()
    for _ in range(size * size):
        jitter = rng.randrange(-8, 9)
        pixels += bytes((min(255, max(0, r + jitter)), min(255, max(0, g + jitter)), min(255, max(0, b + jitter))))
    from PIL import Image  # imported when an image is made: loading the plugin stays cheap

    return Image.frombytes("RGB", (size, size), bytes(pixels))


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            id="testgen",
            plugin="testgen",
            factory=TestGenerator,
            params=(
                Param("steps", "int", 2, min=1, max=1000, help="progress steps"),
                Param("size", "int", 16, min=4, max=512, help="image side in pixels"),
                Param("delay", "float", 0.0, min=0.0, max=10.0, help="seconds per step"),
                Param("fail", "str", "", choices=("", "error", "exception", "exit", "exit-once", "poison-word"), help="failure mode"),
            ),
            weights="procedural (no weights)",
            description="test generator",
            max_batch=4,
        )
    )


@hookimpl
def register_commands(cli):
    import click

    @cli.command(name="testgen-hello")
    @click.argument("name")
    def hello(name):
        """A command added by the test plugin."""
        click.echo(f"hello {name} from testgen")


def colour_squares(size: int = 16, length: int = 8, **_options):
    """A tiny training set: plain squares of the known colours, captioned with the colour's name."""
    import torch

    names = sorted(COLOURS)
    items = []
    for i in range(length):
        name = names[i % len(names)]
        rgb = torch.tensor(COLOURS[name], dtype=torch.float32).div(127.5).sub(1.0)
        items.append({"image": rgb[:, None, None].expand(3, size, size).clone(), "caption": f"a {name} square",
                      "attrs": None})
    return items


@hookimpl
def register_datasets(register):
    register(DatasetSpec(name="testgen-colours", plugin="testgen", factory=colour_squares,
                         description="plain squares of eight colours, captioned with the colour"))


@hookimpl
def job_finished(job, images):
    FINISHED_EVENTS.append((job.id, job.status, len(images)))
