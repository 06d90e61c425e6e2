"""Train a VQGAN's decoder further with its encoder and codebook frozen, edges weighted.

Why: the bundled VQGAN draws a small dark nick at one corner of objects on dark backgrounds, and
its reconstructions miss 7% of the shapes. Both are the decoder's rendering of code grids at
object edges. With the encoder, ``quant_conv`` and the codebook frozen, every image keeps the very
codes it had, so a transformer trained on this VQGAN samples the same tokens and only the decoding
changes: the model folder keeps its transformer. The loss is the recipe's L1 + 4 x L2, with the
pixels at and next to an edge of the true drawing weighted ``1 + --edge-weight``.

    python training/clip-gen-shapes/finetune_decoder.py --out runs/decoder \\
        --vqgan plugins/studio-clip-gen/studio_clip_gen/weights/vqgan.safetensors --minutes 30 --precision bf16
    studio clip-gen judge-vqgan runs/decoder/vqgan.safetensors -n 256

Writes ``OUT/vqgan.safetensors`` (the same format, ``init`` naming the source and this leg's
settings; a resumed leg records the settings given last) and a checkpoint every few minutes
(``--resume`` goes on from it, with the same ``--vqgan`` only), and ``OUT/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from studio.api import TrainingRun, restore_optimizer, sha256_file_cached
from studio.ml import shapes
from studio.ml.evaluate import to_tensor
from studio_clip_gen.checkpoints import load_vqgan, read_safetensors_meta, write_safetensors
from studio_clip_gen.imaging import psnr
from studio_clip_gen.train import init_record


def edge_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """``1 + weight`` on pixels where the true drawing changes (and their neighbours), else 1: ``[B,1,H,W]``."""
    grey = x.mean(dim=1, keepdim=True)
    gx = F.pad((grey[..., :, 1:] - grey[..., :, :-1]).abs(), (0, 1, 0, 0))
    gy = F.pad((grey[..., 1:, :] - grey[..., :-1, :]).abs(), (0, 0, 0, 1))
    edge = ((gx + gy) > 0.05).float()
    edge = F.max_pool2d(edge, 3, stride=1, padding=1)  # the pixels on both sides of an edge
    return 1 + weight * edge


def batch(source: shapes.ShapesSource, rng: np.random.Generator, size: int) -> torch.Tensor:
    return to_tensor([shapes.render_scene(source.scene(int(i))) for i in rng.integers(0, len(source), size)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vqgan", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=10**9)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--l2-weight", type=float, default=4.0)
    parser.add_argument("--edge-weight", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    model = load_vqgan(args.vqgan)
    frozen = [model.encoder, model.quant_conv, model.quantize]
    for part in frozen:
        part.requires_grad_(False).eval()
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trained, lr=args.lr, betas=(0.5, 0.9))
    step = 0
    run = TrainingRun(args.out, echo=lambda record: print(json.dumps(record), flush=True))
    source_sha = sha256_file_cached(args.vqgan)
    if run.checkpoint_path.is_file() and not args.resume:
        parser.error(f"{args.out} holds a run: --resume it, or give another --out")
    saved = run.resume() if args.resume else None
    if saved is not None:
        if saved["source_sha256"] != source_sha:
            parser.error(f"{args.out} trains the decoder of another VQGAN (sha256 {saved['source_sha256'][:16]}...)")
        model.load_state_dict(saved["model"])
        restore_optimizer(opt, saved["optimizer"], args.lr)  # the lr given now, as recorded below
        step = int(saved["step"])
    model.decoder.train()
    model.post_quant_conv.train()
    source = shapes.ShapesSource(seed=0, split="train")
    saved_at = run.leg_seconds
    window: list[dict] = []

    def save() -> None:
        run.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "source_sha256": source_sha})

    while step < args.steps and run.leg_seconds < args.minutes * 60:
        x = batch(source, np.random.default_rng([7, step]), args.batch_size)
        with torch.no_grad():
            z_q = model.encode(x).z_q  # the codes the frozen encoder gives: unchanged by this training
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            xrec = model.decode(z_q).float()
        w = edge_weights(x, args.edge_weight)
        diff = xrec - x
        loss = ((diff.abs() + args.l2_weight * diff.square()) * w).mean() / w.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        with torch.no_grad():
            window.append({"loss": loss.item(), "psnr": psnr(xrec, x)})
        if step % 25 == 0:
            run.log({"step": step, **{k: float(np.mean([r[k] for r in window])) for k in window[0]},
                     "elapsed_s": round(run.train_seconds, 1)})
            window.clear()
        if run.leg_seconds - saved_at > args.checkpoint_minutes * 60:
            save()
            saved_at = run.leg_seconds
    save()
    model.eval()
    meta = read_safetensors_meta(args.vqgan)
    write_safetensors(args.out / "vqgan.safetensors", model.state_dict(),
                      {"vqgan": meta["vqgan"], "steps": step, "source": meta.get("source", args.vqgan.name),
                       "metrics": run.metrics.last, "train_seconds": round(run.train_seconds, 1),
                       "init": {**init_record(args.vqgan), "file": args.vqgan.name,
                                "trained": "decoder and post_quant_conv only (encoder and codebook frozen)",
                                "edge_weight": args.edge_weight, "lr": args.lr, "precision": args.precision}})
    print(json.dumps({"steps": step, "weights": str(args.out / "vqgan.safetensors")}))


if __name__ == "__main__":
    main()
