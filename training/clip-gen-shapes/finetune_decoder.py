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
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from studio.api import append_jsonl, sha256_file_cached
from studio.ml import shapes
from studio_clip_gen.checkpoints import load_vqgan, read_safetensors_meta, write_safetensors
from studio_clip_gen.train import init_record

CHECKPOINT = "checkpoint.pt"


def edge_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """``1 + weight`` on pixels where the true drawing changes (and their neighbours), else 1: ``[B,1,H,W]``."""
    grey = x.mean(dim=1, keepdim=True)
    gx = F.pad((grey[..., :, 1:] - grey[..., :, :-1]).abs(), (0, 1, 0, 0))
    gy = F.pad((grey[..., 1:, :] - grey[..., :-1, :]).abs(), (0, 0, 0, 1))
    edge = ((gx + gy) > 0.05).float()
    edge = F.max_pool2d(edge, 3, stride=1, padding=1)  # the pixels on both sides of an edge
    return 1 + weight * edge


def batch(source: shapes.ShapesSource, rng: np.random.Generator, size: int) -> torch.Tensor:
    images = [np.asarray(shapes.render_scene(source.scene(int(i)))) for i in rng.integers(0, len(source), size)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


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
    step, elapsed = 0, 0.0
    ckpt = args.out / CHECKPOINT
    source_sha = sha256_file_cached(args.vqgan)
    if ckpt.is_file() and not args.resume:
        parser.error(f"{args.out} holds a run: --resume it, or give another --out")
    if args.resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        if saved["source_sha256"] != source_sha:
            parser.error(f"{args.out} trains the decoder of another VQGAN (sha256 {saved['source_sha256'][:16]}...)")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        for group in opt.param_groups:
            group["lr"] = args.lr  # the lr given now, as recorded below
        step, elapsed = int(saved["step"]), float(saved["elapsed"])
    model.decoder.train()
    model.post_quant_conv.train()
    source = shapes.ShapesSource(seed=0, split="train")
    started, saved_at = time.monotonic(), time.monotonic()
    window: list[dict] = []
    last: dict = {}

    def save() -> None:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "source_sha256": source_sha,
                    "elapsed": elapsed + time.monotonic() - started}, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)

    while step < args.steps and time.monotonic() - started < args.minutes * 60:
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
            window.append({"loss": loss.item(), "psnr": float(10 * torch.log10(4 / diff.square().mean().clamp_min(1e-10)))})
        if step % 25 == 0:
            record = {"step": step, **{k: round(float(np.mean([r[k] for r in window])), 5) for k in window[0]},
                      "elapsed_s": round(elapsed + time.monotonic() - started, 1)}
            append_jsonl(args.out / "metrics.jsonl", record)
            last = record
            print(json.dumps(record), flush=True)
            window.clear()
        if time.monotonic() - saved_at > args.checkpoint_minutes * 60:
            save()
            saved_at = time.monotonic()
    save()
    model.eval()
    meta = read_safetensors_meta(args.vqgan)
    write_safetensors(args.out / "vqgan.safetensors", model.state_dict(),
                      {"vqgan": meta["vqgan"], "steps": step, "source": meta.get("source", args.vqgan.name),
                       "metrics": last, "train_seconds": round(elapsed + time.monotonic() - started, 1),
                       "init": {**init_record(args.vqgan), "file": args.vqgan.name,
                                "trained": "decoder and post_quant_conv only (encoder and codebook frozen)",
                                "edge_weight": args.edge_weight, "lr": args.lr, "precision": args.precision}})
    print(json.dumps({"steps": step, "weights": str(args.out / "vqgan.safetensors")}))


if __name__ == "__main__":
    main()
