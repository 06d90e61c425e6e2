"""Train the claims classifier (:mod:`studio.ml.claims`) that re-ranks clip-gen's candidates.

Every training picture is a `shapes` drawing with its true (colour, shape) and (colour, size)
pairs as targets; with ``--vqgan`` a share of them (``--round-trip``) goes through the model's
VQGAN first, encode then decode, so the classifier also reads shapes in the rendering the
generator's candidates have (decoded under ``--precision``; bf16 is a little noisier than the
generator's float32 decode, which the classifier takes as augmentation, and is emulated, slowly, on
CPUs without bf16 arithmetic). The run keeps a checkpoint (``OUT.ckpt``) and resumes from it;
``--init`` starts a new run from a classifier file instead (the shipped one, say), with fresh optimizer moments;
held-out drawings (the eval split, round-tripped when ``--vqgan`` is given) are scored every
``--eval-every`` steps: the share of pictures whose every pair is read right.

    python training/clip-gen-shapes/train_claims.py --out runs/claims.safetensors \
        --vqgan plugins/studio-clip-gen/studio_clip_gen/weights/vqgan.safetensors --minutes 30

then measure it with ``rerank_headroom.py --claims runs/claims.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from studio.api import atomic_path, load_checkpoint, restore_optimizer, sha256_file_cached
from studio.ml.claims import ClaimsNet, claims_training_record, load_claims_net, save_claims_net, training_loss
from studio.ml.datasets import ShapesDataset
from studio.ml.precision import autocast, check_training
from studio.ml.shapes import claim_targets


def scene_batch(dataset: ShapesDataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[int(i)] for i in indices]
    images = torch.stack([item["image"] for item in items])
    targets = torch.stack([torch.from_numpy(claim_targets(
        [(o["colour"], o["shape"], o["size"]) for o in item["attrs"]["objects"]])[0]) for item in items])
    return images, targets


def held_out_accuracy(net: ClaimsNet, images: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        read = net(images) > 0
    return (read == (targets > 0)).all(dim=1).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the classifier's safetensors file")
    parser.add_argument("--vqgan", type=Path, help="pass a share of the pictures through this VQGAN")
    parser.add_argument("--round-trip", type=float, default=0.75, help="share of each batch round-tripped")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="of the VQGAN round trips")
    parser.add_argument("--init", type=Path, help="start from this classifier file (its steps count on)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate, also of a resumed run")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-n", type=int, default=512)
    args = parser.parse_args()
    ckpt = args.out.with_suffix(".ckpt")
    if args.init and ckpt.exists():
        parser.error(f"{ckpt} exists: that run resumes from it; give --init to a new --out")
    if args.init and args.init.resolve() == args.out.resolve():
        parser.error("--init and --out name the same file: the run would overwrite what it starts from")
    if args.threads:
        torch.set_num_threads(args.threads)

    vqgan = None
    if args.vqgan:
        from studio_clip_gen.checkpoints import load_vqgan

        check_training("cpu", args.precision)  # logs a warning where bf16 would only be emulated
        vqgan = load_vqgan(args.vqgan).eval().requires_grad_(False)

    def render(images: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
        if vqgan is None or share <= 0:
            return images
        k = int(round(len(images) * share))
        pick = torch.randperm(len(images), generator=gen)[:k]
        out = images.clone()
        with torch.no_grad(), autocast("cpu", args.precision):
            out[pick] = vqgan(images[pick])[0].float().clamp(-1, 1)
        return out

    train = ShapesDataset(size=64, split="train")
    held = ShapesDataset(size=64, split="eval")
    eval_images, eval_targets = scene_batch(held, range(args.eval_n))
    eval_images = render(eval_images, 1.0, torch.Generator().manual_seed(0))

    net = ClaimsNet()
    step, best, init = 0, -1.0, {}
    if args.init:
        net = load_claims_net(args.init).train().requires_grad_(True)
        step = int(claims_training_record(args.init).get("steps", 0))
        init = {"init": {"sha256": sha256_file_cached(args.init), "steps": step}}
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    if ckpt.exists():
        state = load_checkpoint(ckpt)  # a damaged file is one line, not a traceback
        net.load_state_dict(state["net"])
        restore_optimizer(opt, state["opt"], args.lr)
        step, best = int(state["step"]), float(state["best"])
    gen = torch.Generator().manual_seed(step)
    deadline = time.monotonic() + args.minutes * 60

    def evaluate_and_save(loss: float) -> None:
        nonlocal best
        net.eval()
        acc = held_out_accuracy(net, eval_images, eval_targets)
        net.train()
        record = {"step": step, "loss": round(loss, 5), "held_out_all_pairs_right": round(acc, 4)}
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(json.dumps(record), flush=True)
        if acc > best:
            best = acc
            meta = {"steps": step, "held_out_all_pairs_right": acc, "eval_n": args.eval_n,
                    **init, "round_trip": args.round_trip if vqgan is not None else 0.0,
                    "round_trip_precision": args.precision,
                    **({"vqgan_sha256": sha256_file_cached(args.vqgan)} if vqgan is not None else {})}
            save_claims_net(net, args.out, meta)
        with atomic_path(ckpt) as tmp:
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "best": best}, tmp)

    loss = None
    with open(args.out.with_suffix(".jsonl"), "a") as log:
        while time.monotonic() < deadline:
            indices = torch.randint(len(train), (args.batch_size,), generator=gen)
            images, targets = scene_batch(train, indices)
            loss = training_loss(net(render(images, args.round_trip, gen)), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % args.eval_every == 0:
                evaluate_and_save(loss.item())
        if loss is not None and step % args.eval_every:
            evaluate_and_save(loss.item())  # the steps since the last evaluation are kept too

if __name__ == "__main__":
    main()
