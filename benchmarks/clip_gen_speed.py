"""CLIP-GEN speed: the key/value cache against full recomputation, batching, re-ranking, VQGAN f16.

Sampling uses random weights (speed does not depend on them) in two transformer sizes: the
bundled default's shape (64px VQGAN, 8x8 tokens; read from the installed model when there is one)
and, without --quick, a 16x16 grid as in the paper. Rows: tokens/s with and without the cache
(the reimplementation recomputes the whole prefix for every token), and whole images/s (sample +
decode) at batch 1 and 16. With the bundled model installed: images/s of its Generator (text ->
image, as a job runs it) and the cost of each re-ranking candidate. Last, one taming f16 VQGAN
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
            "seconds_per_image": one, "seconds_per_extra_candidate": per_candidate}


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
