"""GALIP generator speed on CPU: images/s of plain eager float32 against the usual optimisations.

Networks (``network`` column): ``official 224`` is the official size (CLIP ViT-B/32 trunk,
224px; random weights, as the tests build it), ``small 64`` the bundled model's configuration
(``SMALL_WIDTHS`` on Studio's small CLIP ``studio-tiny-64-avg``, 64px; random weights) and,
when ``weights/galip-shapes.safetensors`` is installed, ``bundled 64`` is the bundled model
itself, loaded by its generator. Random weights get random affine layers too, so the prompt
changes the image as in a trained model (speed does not depend on the values).

For every network and batch the variants run interleaved on the same inputs (best of the
repeats): ``eager`` is ``G(noise, sent)`` under ``torch.no_grad``, the official sampler and the
figure every ratio is against; ``inference_mode``; ``+ channels_last`` (inference_mode with
channels-last weights and activations); ``fast kernels`` (the large 3x3 layers on NNPACK's
Winograd kernels and the fused modulation: the generator's ``cpu_kernels=fast``, its default, see
studio_galip.kernels); ``N threads`` (eager on all cores, batch 1; not for the official size
with ``--quick``); with ``--compile``, ``torch.compile`` (batch 1; compiling takes a minute or
more per network). ``pixels`` says whether the uint8 image (``to_uint8``) is bit-identical to
eager's; the largest float difference is in the JSON. An optimisation that changes pixels is
used by the generator only as a setting recorded in the recipe (``cpu_kernels``), so an image
regenerates with the kernels it was made with. Small and bundled networks add
``GalipGenerator.generate`` end to end for 32 requests (prompt encoding included):
``generate()`` is the default batch-invariant path (one image at a time), ``generate() batched``
is ``batch_invariant=False``.
``--quick``: official size at batch 1 and 8 with 1-2 repeats, small configuration at 1 and 32.
Usage: python benchmarks/galip_speed.py [--quick] [--threads N] [--compile]   (needs: pip install -e plugins/studio-galip)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

from common import report

EAGER = "eager"
PROMPTS = ["a red circle left of a blue square", "a green triangle", "a yellow diamond above a purple circle"]


def _import_plugin() -> None:
    try:
        import studio_galip  # noqa: F401
    except ImportError:  # a source tree without the plugin installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "studio-galip"))


def randomise_affines(G, seed: int = 1, std: float = 0.02):
    """Random weights for the affine layers' last linears (zero at init: the prompt would not matter)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if ".linear2." in name and p.requires_grad:
                offset = 1.0 if name.endswith("fc_gamma.linear2.bias") else 0.0
                p.copy_(torch.randn(p.shape, generator=gen) * std + offset)
    return G


def official_nets():
    import open_clip
    import torch

    from studio_galip.model import GalipConfig, build_nets

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval().requires_grad_(False)
    nets = build_nets(GalipConfig(), clip, with_d=False)
    randomise_affines(nets.G)
    return nets


def small_nets():
    import torch

    from studio.ml.clip_configs import create_small_clip
    from studio_galip.model import build_nets
    from studio_galip.train import default_config

    torch.manual_seed(0)
    clip = create_small_clip("studio-tiny-64-avg").eval().requires_grad_(False)
    nets = build_nets(default_config(clip), clip, with_d=False)
    randomise_affines(nets.G)
    return nets


def bundled_generator():
    """The bundled model through its generator, or None when its weights are not installed."""
    from studio_galip.generator import GalipGenerator
    from studio_galip.model_dir import bundled_card

    card = bundled_card()
    if card is None:
        return None
    gen = GalipGenerator(card.source())
    gen.load("cpu")
    return gen


class Variant:
    """One way to run G: ``run(noise, sent)`` returns float images, on ``threads`` torch threads if set."""

    def __init__(self, name: str, run, threads: int | None = None, batch_one_only: bool = False) -> None:
        self.name, self.run, self.threads, self.batch_one_only = name, run, threads, batch_one_only


def variants(G, threads: int, compile_: bool, more_threads: bool, notes: dict) -> list[Variant]:
    import torch

    def eager(noise, sent):
        with torch.no_grad():
            return G(noise, sent)

    def inference(noise, sent):
        with torch.inference_mode():
            return G(noise, sent)

    G_cl = copy.deepcopy(G).to(memory_format=torch.channels_last)

    def channels_last(noise, sent):
        with torch.inference_mode():
            return G_cl(noise, sent)

    from studio_galip.kernels import fast_kernels

    def fast(noise, sent):
        with torch.no_grad(), fast_kernels(G):
            return G(noise, sent)

    out = [Variant(EAGER, eager), Variant("inference_mode", inference), Variant("+ channels_last", channels_last),
           Variant("fast kernels", fast)]
    cores = os.cpu_count() or 1
    if cores > threads and more_threads:
        out.append(Variant(f"{cores} threads", eager, threads=cores, batch_one_only=True))
    if compile_:
        compiled = torch.compile(G)
        state = {"first": True}

        def run_compiled(noise, sent):
            start = time.perf_counter()
            with torch.inference_mode():
                result = compiled(noise, sent)
            if state.pop("first", False):
                notes["compile_s"] = round(time.perf_counter() - start, 1)
            return result

        out.append(Variant("torch.compile", run_compiled, batch_one_only=True))
    return out


def measure(G, cfg, batch: int, repeat: int, warmup: bool, vs: list[Variant], threads: int):
    """Best seconds per variant (interleaved, so background load hits all alike) and last outputs."""
    import torch

    gen = torch.Generator().manual_seed(batch)
    noise = torch.randn(batch, cfg.nz, generator=gen)
    sent = torch.randn(batch, cfg.cond_dim, generator=gen)
    if cfg.cond_scale != "raw":
        from studio_galip.model import condition

        sent = condition(sent, cfg.cond_scale)
    active = [v for v in vs if batch == 1 or not v.batch_one_only]
    best = {v.name: float("inf") for v in active}
    outputs = {}
    # Variants on the default thread count run interleaved; a thread-count change slows the calls
    # after it, so the others run on their own afterwards.
    groups = [[v for v in active if not v.threads]] + [[v] for v in active if v.threads]
    for group in groups:
        torch.set_num_threads(group[0].threads or threads)
        if warmup:
            for v in group:
                v.run(noise, sent)
        # Fast calls repeat until about half a second each has passed: their minimum needs samples.
        rep, begun = 0, time.perf_counter()
        while rep < repeat or (rep < 50 and time.perf_counter() - begun < len(group) * 0.5):
            for v in group:
                start = time.perf_counter()
                outputs[v.name] = v.run(noise, sent)
                best[v.name] = min(best[v.name], time.perf_counter() - start)
            rep += 1
    torch.set_num_threads(threads)
    return best, outputs


def pixel_check(out, ref) -> tuple[str, float]:
    import torch

    from studio_galip.generator import to_uint8

    diff = float((out.float() - ref).abs().max())
    a, b = to_uint8(out.float().contiguous()), to_uint8(ref)
    if torch.equal(a, b):
        return "identical", diff
    return f"{int((a != b).sum())} differ", diff


def generate_rows(model: str, gen_factory, batch: int, repeat: int) -> list[list]:
    """End to end through GalipGenerator.generate: batch-invariant (default) and batched."""
    from studio.generators import Request

    rows, rates = [], {}
    requests = [Request(PROMPTS[i % len(PROMPTS)], i, index=i) for i in range(batch)]
    for label, invariant in (("generate()", True), ("generate() batched", False)):
        gen = gen_factory(invariant)
        gen.generate(requests[:2], lambda d, t: None)
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            gen.generate(requests, lambda d, t: None)
            best = min(best, time.perf_counter() - start)
        rates[label] = batch / best
        first = next(iter(rates.values()))
        rows.append([model, batch, label, rates[label], f"{rates[label] / first:.2f}x", "n/a"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores distorts timings)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile at batch 1 (slow to compile)")
    args = parser.parse_args()

    import torch

    _import_plugin()
    from studio_galip.generator import GalipGenerator

    torch.set_num_threads(args.threads)
    rows, figures, notes = [], {}, {}

    # (batch, repeats, warm-up) per network. The official size at batch 32 takes ~30 s a call;
    # larger batches skip the warm-up (batch 1 has already paid the first-call costs).
    small_plan = [(1, 3, True), (32, 2, True)] if args.quick else [(1, 5, True), (32, 3, True)]
    plans = {
        "official 224": (official_nets, [(1, 2, True), (8, 1, False)] if args.quick
                         else [(1, 3, True), (8, 2, False), (32, 1, False)]),
        "small 64": (small_nets, small_plan),
    }
    bundled = bundled_generator()
    if bundled is not None:
        plans["bundled 64"] = (lambda: bundled.nets, small_plan)
    else:
        notes["bundled"] = "weights/galip-shapes.safetensors not installed: no bundled rows"

    for model, (build, plan) in plans.items():
        nets = build()
        G = nets.G.eval()
        model_notes: dict = {}
        # All cores on the official size cost ~15 s under load; --quick leaves them to the small one.
        vs = variants(G, args.threads, args.compile, not (args.quick and model == "official 224"), model_notes)
        for batch, repeat, warmup in plan:
            best, outputs = measure(G, nets.cfg, batch, repeat, warmup, vs, args.threads)
            base, ref = best[EAGER], outputs[EAGER]
            for name, seconds in best.items():
                pixels, diff = ("reference", 0.0) if name == EAGER else pixel_check(outputs[name], ref)
                rate = batch / seconds
                rows.append([model, batch, name, rate, f"{base / seconds:.2f}x", pixels])
                figures[f"{model}, batch {batch}, {name}"] = {"images_per_s": rate, "vs_eager": base / seconds,
                                                               "pixels": pixels, "max_abs_diff": diff}
        if model != "official 224":
            def factory(invariant, _nets=nets, _model=model):
                if _model == "bundled 64" and invariant:
                    return bundled  # the installed model's own generator, as Studio runs it
                gen = GalipGenerator.from_nets(_nets, batch_invariant=invariant)
                gen.load("cpu")
                return gen

            rows += generate_rows(model, factory, 32, 1 if args.quick else 2)
        if model_notes:
            notes[model] = model_notes
        del nets, G, vs

    scope = "quick: official size at batch 1 and 8 only, 1-2 repeats" if args.quick else "full"
    path = report("galip_speed", f"GALIP generator speed on CPU ({args.threads} threads; {scope})",
                  ["network", "batch", "variant", "images/s", "vs eager", "pixels"], rows,
                  {"figures": figures, "notes": notes, "threads": args.threads, "quick": args.quick,
                   "compile": args.compile})
    for key, value in notes.items():
        print(f"{key}: {value}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
