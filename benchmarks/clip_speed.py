"""CLIP speed on CPU: text and image embeddings per second, and training steps per second.

Random weights (speed does not depend on them). Two CLIPs: Studio's small one
(``studio-tiny-64-avg``, 64px, 32-token context) and open_clip's ``ViT-B-32`` (224px, 77 tokens,
the size GALIP's official models use). Embedding rows: items/s at batch 1 and 64 through the
standard ``encode_text`` / ``encode_image`` under ``torch.inference_mode``; for the small CLIP
also ``text, trimmed``: text cut to the longest caption, as its training does. Training row: steps/s of
``studio.ml.train_clip.train_clip`` on ``shapes`` (median per-step rate, first step excluded).
``--quick`` measures ViT-B-32 at batch 1 and 8 only, with fewer repeats, and trains 3 steps at
batch 32 (the table says so).
Usage: python benchmarks/clip_speed.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from common import best_time, report

CAPTIONS = ["a red circle left of a blue square", "a green triangle", "a yellow diamond above a purple circle",
            "an orange square right of a white triangle"]


def embedding_rows(name: str, model, tokenizer, batches: tuple[int, ...], repeat: int, trimmed: bool) -> tuple[list, dict]:
    import torch

    from studio.ml.clip_features import clip_image_size
    from studio.ml.train_clip import encode_text_trimmed

    size = clip_image_size(model)
    rows, figures = [], {}
    for batch in batches:
        tokens = tokenizer([CAPTIONS[i % len(CAPTIONS)] for i in range(batch)])
        images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        measures = {"text embeddings": lambda: model.encode_text(tokens),
                    "image embeddings": lambda: model.encode_image(images)}
        if trimmed:
            measures["text, trimmed"] = lambda: encode_text_trimmed(model, tokens)
        for what, fn in measures.items():
            with torch.inference_mode():
                seconds = best_time(fn, repeat, min_seconds=0.5)
            rate = batch / seconds
            rows.append([name, what, batch, rate, round(seconds * 1000 / batch, 2)])
            figures[f"{what}, batch {batch}"] = rate
    return rows, figures


def training_row(name: str, steps: int, batch: int, threads: int) -> tuple[list, dict]:
    from studio.ml.train_clip import train_clip

    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="studio-bench-clip-") as out:
        summary = train_clip(out, steps=steps, batch_size=batch, model=name, threads=threads, log_every=1,
                             eval_n=8, eval_every_s=1e9, checkpoint_every_s=1e9, progress=records.append)
    rates = [r["steps_per_s"] for r in records[1:]] or [summary["steps_per_s"]]
    rate = statistics.median(rates)
    row = [name, f"training steps ({steps} on shapes)", batch, rate, round(1000 / rate, 1)]
    return row, {"steps_per_s": rate, "samples_per_s": rate * batch, "steps": steps, "batch_size": batch,
                 "steps_per_s_incl_first_step": summary["steps_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores distorts timings)")
    args = parser.parse_args()

    import open_clip
    import torch

    from studio.ml.clip_configs import create_small_clip, get_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeat = 2 if args.quick else 3
    small_name = "studio-tiny-64-avg"
    rows, figures = [], {}

    small = create_small_clip(small_name).eval()
    part, figures[small_name] = embedding_rows(small_name, small, get_tokenizer(small_name), (1, 64), repeat, True)
    rows += part
    del small

    big_batches = (1, 8) if args.quick else (1, 64)
    big = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    part, figures["ViT-B-32"] = embedding_rows("ViT-B-32", big, open_clip.get_tokenizer("ViT-B-32"), big_batches,
                                               1 if args.quick else repeat, False)
    rows += part
    del big

    steps, batch = (3, 32) if args.quick else (12, 128)
    row, figures[f"{small_name} training"] = training_row(small_name, steps, batch, args.threads)
    rows.append(row)
    torch.set_num_threads(args.threads)  # train_clip sets its own

    scope = "quick: ViT-B-32 at batch 1 and 8 only, training 3 steps at batch 32" if args.quick else "full"
    path = report("clip_speed", f"CLIP speed on CPU ({args.threads} threads, random weights; {scope})",
                  ["model", "measure", "batch", "per s", "ms each"], rows,
                  {"figures": figures, "threads": args.threads, "quick": args.quick})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
