"""CLIP-GEN sampling speed: the key/value cache against full recomputation, and batching.

Random weights (speed does not depend on them). Two transformer sizes: the bundled default's
shape (64px VQGAN, 8x8 tokens) and, without --quick, a 16x16 grid as in the paper. Rows:
tokens/s with and without the cache (the reimplementation recomputes the whole prefix for every
token), and whole images/s (sample + decode) at batch 1 and 16.
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
    shapes = {"8x8 grid, width 256, 6 layers": GPTConfig(n_codes=512, grid=8, width=256, n_layers=6, n_heads=8, clip_dim=128)}
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

    path = report("clip_gen_speed", f"CLIP-GEN sampling speed ({args.threads} threads, random weights)",
                  ["transformer", "measure", "value", "ratio"], rows, {"figures": figures, "threads": args.threads})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
