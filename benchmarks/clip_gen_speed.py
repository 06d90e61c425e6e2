"""CLIP-GEN speed: the key/value cache against full recomputation, batching, re-ranking, VQGAN f16.

Sampling uses random weights (speed does not depend on them) in two transformer sizes: the
bundled default's shape (64px VQGAN, 8x8 tokens; read from the installed model when there is one)
and, without --quick, a 16x16 grid as in the paper. Rows: tokens/s with and without the cache
(the reimplementation recomputes the whole prefix for every token), and whole images/s (sample +
decode) at batch 1 and 16. With the bundled model installed: images/s of its Generator (text ->
image, as a job runs it) and the cost of each re-ranking candidate, and the default settings
(8 candidates, keep 1) before and after batched decoding, interleaved, medians, the kept images
checked byte-identical. Last, one taming f16 VQGAN
(256px, 16x16 tokens) encode and decode with random weights.
Usage: python benchmarks/clip_gen_speed.py [--quick] [--threads N]   (needs: pip install -e plugins/studio-clip-gen)
"""

from __future__ import annotations

import argparse

from common import best_time, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores distorts small-op timings)")
    args = parser.parse_args()

    import torch

    from studio_clip_gen.commands import VQ_PRESETS
    from studio_clip_gen.gpt import GPT, GPTConfig, sample
    from studio_clip_gen.vqgan import VQConfig, VQModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vq = VQModel(VQConfig.from_dict({**VQConfig().to_dict(), **VQ_PRESETS["tiny"]})).eval()
    bundled = _bundled_gpt_config()
    small = bundled or GPTConfig(n_codes=512, grid=8, width=256, n_layers=6, n_heads=8, clip_dim=128)
    shapes = {f"8x8 grid, width {small.width}, {small.n_layers} layers": small}
    if not args.quick:
        shapes["16x16 grid, width 256, 6 layers"] = GPTConfig(n_codes=1024, grid=16, width=256, n_layers=6, n_heads=8, clip_dim=128)
    repeat = 2 if args.quick else 5

    rows, figures = [], {}
    for name, cfg in shapes.items():
        gpt = GPT(cfg).eval()

        def run(batch: int, cache: bool):
            cond = torch.randn(batch, cfg.clip_dim)
            gens = [torch.Generator().manual_seed(i) for i in range(batch)]
            return sample(gpt, cond, gens, top_k=100, use_cache=cache)

        cached = best_time(lambda: run(1, True), repeat)
        uncached = best_time(lambda: run(1, False), repeat)
        tps_cached, tps_uncached = cfg.block_size / cached, cfg.block_size / uncached
        rows.append([name, "tokens/s, batch 1, kv cache", tps_cached, f"{tps_cached / tps_uncached:.1f}x"])
        rows.append([name, "tokens/s, batch 1, no cache", tps_uncached, "1x"])
        figures[name] = {"tokens_per_s_cache": tps_cached, "tokens_per_s_no_cache": tps_uncached,
                         "cache_speedup": tps_cached / tps_uncached}
        if cfg.grid == vq.config.grid:
            per_image = {}
            for batch in (1, 16):
                with torch.no_grad():
                    seconds = best_time(lambda: vq.decode_indices(run(batch, True)), repeat)
                per_image[batch] = batch / seconds
            rows.append([name, "images/s (64px, sample + decode), batch 1", per_image[1], "1x"])
            rows.append([name, "images/s (64px, sample + decode), batch 16", per_image[16], f"{per_image[16] / per_image[1]:.1f}x"])
            figures[name].update(images_per_s_batch1=per_image[1], images_per_s_batch16=per_image[16])

    if bundled is not None:
        figures["bundled"] = _bundled_rows(rows, repeat)
    figures["vqgan_f16_256px"] = _f16_rows(rows, 1 if args.quick else 3)

    path = report("clip_gen_speed", f"CLIP-GEN speed ({args.threads} threads)",
                  ["transformer", "measure", "value", "ratio"], rows, {"figures": figures, "threads": args.threads})
    print(f"wrote {path}")


def _bundled_gpt_config():
    from studio_clip_gen import plugin
    from studio_clip_gen.checkpoints import read_safetensors
    from studio_clip_gen.gpt import GPTConfig

    if not (plugin.BUNDLED_DIR / plugin.MODEL_JSON).is_file():
        return None
    _, meta = read_safetensors(plugin.BUNDLED_DIR / "transformer.safetensors")
    return GPTConfig.from_dict(meta["gpt"])


def _bundled_rows(rows: list, repeat: int) -> dict:
    """The installed default model through its Generator: what a job costs, and each extra candidate."""
    from studio.generators import Request
    from studio_clip_gen import plugin
    from studio_clip_gen.generator import ClipGenGenerator

    gen = ClipGenGenerator("clip-gen", plugin.BUNDLED_DIR)
    gen.load("cpu")

    def run(batch: int, candidates: int) -> None:
        requests = [Request("a red circle above a blue square", i, {"candidates": candidates}, index=i) for i in range(batch)]
        gen.generate(requests, lambda _d, _t: None)

    before_after = _before_after(gen, rows, 3 if repeat <= 2 else 9)
    per_image = {b: b / best_time(lambda: run(b, 1), repeat) for b in (1, 16)}
    one, eight = best_time(lambda: run(1, 1), repeat), best_time(lambda: run(1, 8), repeat)
    per_candidate = (eight - one) / 7
    name = "bundled clip-gen (Generator)"
    rows.append([name, "images/s, batch 1, candidates=1", per_image[1], "1x"])
    rows.append([name, "images/s, batch 16, candidates=1", per_image[16], f"{per_image[16] / per_image[1]:.1f}x"])
    rows.append([name, "images/s, batch 1, candidates=8 (default)", 1 / eight, f"{one / eight:.2f}x"])
    rows.append([name, "seconds per extra re-ranking candidate", per_candidate, f"{per_candidate / one:.2f}x of one image"])
    return {"images_per_s_batch1": per_image[1], "images_per_s_batch16": per_image[16],
            "images_per_s_batch1_default_candidates": 1 / eight,
            "seconds_per_image": one, "seconds_per_extra_candidate": per_candidate, **before_after}


def _per_image_decode(gen):
    """The generator as it was before batched decoding (every candidate decoded alone), same weights."""
    import types

    import torch

    from studio_clip_gen import generator as module

    def run_chunk(self, chunk, plan, images, scores, progress, done, total):
        vqgan = self.vqgan

        class PerImage:  # decode_indices_as_alone -> one image at a time, as before
            def __getattr__(self, name):
                return getattr(vqgan, name)

            def decode_indices_as_alone(self, indices, batch):
                return torch.cat([vqgan.decode_indices(row[None]) for row in indices])

        self.vqgan = PerImage()
        try:
            return module.ClipGenGenerator._run_chunk(self, chunk, plan, images, scores, progress, done, total)
        finally:
            self.vqgan = vqgan

    old = module.ClipGenGenerator.__new__(module.ClipGenGenerator)
    old.__dict__.update(gen.__dict__)
    old._run_chunk = types.MethodType(run_chunk, old)
    return old


def _decode_before_after(gen, rounds: int) -> dict:
    """The decoder alone on 8 token grids: one image at a time against one batch (same bits), interleaved."""
    import statistics
    import time

    import torch

    tokens = torch.randint(0, gen.vqgan.config.n_embed, (8, gen.vqgan.config.grid ** 2), generator=torch.Generator().manual_seed(0))
    runs = {"alone": lambda: torch.cat([gen.vqgan.decode_indices(row[None]) for row in tokens]),
            "batched": lambda: gen.vqgan.decode_indices_as_alone(tokens, 8)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        if not torch.equal(runs["alone"](), runs["batched"]()):
            raise SystemExit("batched decoding differs from decoding alone")
        for _ in range(rounds):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {f"{name}_s": statistics.median(values) for name, values in times.items()}


def _before_after(gen, rows: list, rounds: int) -> dict:
    """Default settings (8 candidates, keep 1) before and after, interleaved in one run, medians;
    the kept images are checked to be byte-identical."""
    import statistics
    import time

    from studio.generators import Request

    old = _per_image_decode(gen)
    prompts = ["a red circle above a blue square", "a green triangle", "two yellow squares"]
    times: dict[str, list[float]] = {"before": [], "after": []}
    for k in range(rounds + 1):  # the first round warms up and is not counted
        request = [Request(prompts[k % len(prompts)], k, {}, index=0)]
        images = {}
        for name, g in (("before", old), ("after", gen)) if k % 2 else (("after", gen), ("before", old)):
            start = time.perf_counter()
            (result,) = g.generate(request, lambda _d, _t: None)
            elapsed = time.perf_counter() - start
            images[name] = result.image.tobytes()
            if k:
                times[name].append(elapsed)
        if images["before"] != images["after"]:
            raise SystemExit("the kept image differs between the two paths")
    before, after = (1 / statistics.median(times[n]) for n in ("before", "after"))
    paired = statistics.median(b / a for b, a in zip(times["before"], times["after"]))  # per round: robust to drifting load
    name = "bundled clip-gen, default settings (8 candidates, keep 1)"
    rows.append([name, "images/s before (candidates decoded one at a time)", before, "1x"])
    rows.append([name, "images/s after (batched decode, same pixels)", after,
                 f"{after / before:.2f}x (paired {paired:.2f}x)"])
    decode = _decode_before_after(gen, rounds)
    rows.append([name, "decoding the 8 candidates, seconds: one at a time", decode["alone_s"], "1x"])
    rows.append([name, "decoding the 8 candidates, seconds: batched as alone", decode["batched_s"],
                 f"{decode['alone_s'] / decode['batched_s']:.2f}x faster"])
    return {**decode, "default_images_per_s_before": before, "default_images_per_s_after": after,
            "default_speedup": after / before, "default_speedup_paired_median": paired,
            "default_rounds": rounds, "same_images": True}


def _f16_rows(rows: list, repeat: int) -> dict:
    import torch

    from studio_clip_gen.vqgan import F16_1024, VQModel

    model = VQModel(F16_1024).eval()
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        indices = model.encode_to_indices(x)
        encode = best_time(lambda: model.encode_to_indices(x), repeat)
        decode = best_time(lambda: model.decode_indices(indices), repeat)
    name = "VQGAN f16 (taming, 256px, random weights)"
    rows.append([name, "encode, seconds per image", encode, "1x"])
    rows.append([name, "decode, seconds per image", decode, f"{decode / encode:.1f}x"])
    return {"encode_s": encode, "decode_s": decode}


if __name__ == "__main__":
    main()
