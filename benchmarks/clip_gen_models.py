"""CLIP-GEN model folders side by side: seconds per request at each model's own default settings.

What a job costs with no ``--param``: the model card's defaults over the plugin's (candidates,
guidance, ...), prompt encoding, sampling, decoding and re-ranking included. The bundled model is
always measured; ``--also DIR`` adds any other model folder (e.g. a previous release's weights,
``git show REV:plugins/studio-clip-gen/studio_clip_gen/weights/FILE``), so two generations of the
default model are compared in one run. The models alternate request by request (the order flips
every round), one warm-up round is not counted, and the figure is the median.
Usage: python benchmarks/clip_gen_models.py [--also DIR ...] [--rounds N | --quick] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import report

PROMPTS = ["a red circle above a blue square", "a green triangle", "a small yellow diamond on a dark background",
           "a large purple square left of an orange circle"]


def _model(name: str, folder: Path):
    from studio.generators import ModelSpec
    from studio_clip_gen import plugin
    from studio_clip_gen.generator import ClipGenGenerator

    card = plugin.read_card(folder)
    spec = ModelSpec(id=name, plugin="clip-gen", factory=lambda: None, params=plugin.params_for(folder, card))
    generator = ClipGenGenerator(name, folder)
    generator.load("cpu")
    return generator, {**plugin.DEFAULTS, **spec.validate_params({})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--also", type=Path, action="append", default=[], help="another model folder")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="two rounds (for CI)")
    parser.add_argument("--threads", type=int, help="torch threads [default: torch's]")
    args = parser.parse_args()

    import torch

    from studio.generators import Request
    from studio_clip_gen import plugin

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds = 2
    models = {"bundled clip-gen": _model("clip-gen", plugin.BUNDLED_DIR)}
    for folder in args.also:
        models[str(folder)] = _model(folder.name, folder)
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for k in range(args.rounds + 1):
        for name in names if k % 2 else reversed(names):
            generator, params = models[name]
            start = time.perf_counter()
            generator.generate([Request(PROMPTS[k % len(PROMPTS)], k, dict(params), index=0)], lambda _d, _t: None)
            if k:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times[names[0]])
    rows = []
    for name in names:
        generator, params = models[name]
        median = statistics.median(times[name])
        described = generator.describe()
        shown = " ".join(f"{k}={params.get(k, 1.0)}" for k in ("candidates", "guidance"))
        rows.append([name, f"{described['grid']}x{described['grid']}", shown, round(median, 3),
                     round(1 / median, 2), f"{median / base:.2f}x"])
    report("clip_gen_models", f"CLIP-GEN models at their defaults (threads {torch.get_num_threads()}, "
           f"{args.rounds} rounds, medians)", ["model", "tokens", "defaults", "s/request", "images/s", "time vs bundled"],
           rows, {"threads": torch.get_num_threads(), "rounds": args.rounds})


if __name__ == "__main__":
    main()
