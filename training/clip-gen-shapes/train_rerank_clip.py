"""Train the CLIP that re-ranks the bundled clip-gen model's candidates.

A CLIP trained on clean drawings accepts a generator's soft blobs as any shape, and so picks
the wrong candidate about as often as the right one. This trains one on the same `shapes` data
as it will judge: every training image (and every distractor, the same scene with one outline
redrawn as another shape or as one no caption names) goes through the model's VQGAN, encode
then decode, so the shapes are read in the rendering the generator's candidates have.

    python training/clip-gen-shapes/train_rerank_clip.py --out runs/judge \
        --vqgan plugins/studio-clip-gen/studio_clip_gen/weights/vqgan.safetensors \
        --init studio/ml/weights/clip-small.safetensors --minutes 45
    studio train export-clip runs/judge runs/judge.safetensors

then measure it with ``rerank_headroom.py`` and ship it with ``studio clip-gen package
--rerank-clip runs/judge.safetensors``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from studio.api import sha256_file_cached
from studio.ml.train_clip import train_clip
from studio_clip_gen.checkpoints import load_vqgan


def round_trip(vqgan_file: Path, precision: str, batch: int = 64):
    vqgan = load_vqgan(vqgan_file).eval().requires_grad_(False)

    def transform(images: torch.Tensor) -> torch.Tensor:
        vqgan.to(images.device)  # wherever train_clip put the batch (a no-op after the first call)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return torch.cat([vqgan(images[k : k + batch])[0].float() for k in range(0, len(images), batch)])

    return transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vqgan", type=Path, required=True)
    parser.add_argument("--init", type=Path, help="an exported CLIP to start from")
    parser.add_argument("--model", default="studio-tiny-64-avg")
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--distractor-weight", type=float, default=1.0)
    parser.add_argument("--blur", type=float, default=0.0)
    parser.add_argument("--distractor-resize", type=float,
                        help="share of the distractors of captions naming sizes drawn at the other size "
                             "[default: 0; a resumed run keeps its own]")
    parser.add_argument("--probe-weight", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    summary = train_clip(
        args.out, dataset="shapes", minutes=args.minutes, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        resume=args.resume, model=args.model, distractor_weight=args.distractor_weight, blur=args.blur,
        **({"distractor_resize": args.distractor_resize} if args.distractor_resize is not None else {}),
        probe_weight=args.probe_weight, threads=args.threads, precision=args.precision,
        init=str(args.init) if args.init and not args.resume else None,
        image_transform=round_trip(args.vqgan, args.precision),
        render=f"VQGAN round trip ({args.vqgan.name}, sha256 {sha256_file_cached(args.vqgan)[:16]})",
    )
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
