"""Training speed per optimiser step: float32 against bfloat16 mixed precision (``--precision bf16``).

Each row runs the real trainer (``train_vqgan``, ``train_transformer``, ``train_galip``) on the
`shapes` dataset for a few steps in a temporary folder and times the steps from the trainer's own
callbacks, after warm-up steps; the two precisions alternate (fp32, bf16, fp32, bf16, ...) and the
figure is the median step. Networks: CLIP-GEN's ``tiny-f4c`` VQGAN (16x16 codes at 64px) at batch
32; a width-192, 4-layer transformer over those codes at batch 32 (its step includes encoding the
batch with the frozen VQGAN and CLIP); the bundled GALIP configuration at batch 32. bfloat16 is
only fast where the CPU has AMX or AVX512-BF16 (``cpu_bf16`` in the JSON); elsewhere it is
emulated, about 20x slower than fp32, so ``--quick`` (CI) leaves bf16 out there (``bf16_skipped``).
Usage: python benchmarks/training_speed.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import report


def _step_times(run) -> list[float]:
    """Seconds between consecutive step callbacks of one trainer call."""
    stamps: list[float] = []
    run(lambda *_: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def vqgan_run(precision: str, steps: int):
    from studio.ml.datasets import open_dataset
    from studio_clip_gen.commands import VQ_PRESETS
    from studio_clip_gen.train import VQTrainConfig, train_vqgan
    from studio_clip_gen.vqgan import VQConfig

    vq = VQConfig.from_dict({**VQConfig().to_dict(), **VQ_PRESETS["tiny-f4c"]})
    cfg = VQTrainConfig(steps=steps, batch_size=32, disc_start=10**6, l2_weight=4.0, kmeans_batches=1,
                        sample_every=10**6, checkpoint_every=10**6, precision=precision)

    def run(on_step):
        with tempfile.TemporaryDirectory() as out:
            train_vqgan(open_dataset("shapes", 64), out, vq, cfg, on_step=on_step)
    return run


def transformer_run(precision: str, steps: int):
    from studio.ml import BUNDLED_CLIP_FILE
    from studio.ml.datasets import open_dataset
    from studio_clip_gen.clip_embed import embed_dim
    from studio_clip_gen.commands import VQ_PRESETS
    from studio_clip_gen.gpt import GPTConfig
    from studio_clip_gen.model_dir import read_clip
    from studio_clip_gen.train import GPTTrainConfig, train_transformer
    from studio_clip_gen.vqgan import VQConfig, VQModel

    vq = VQConfig.from_dict({**VQConfig().to_dict(), **VQ_PRESETS["tiny-f4c"]})
    clip, _ = read_clip(BUNDLED_CLIP_FILE, None)
    gpt = GPTConfig(n_codes=vq.n_embed, grid=vq.grid, width=192, n_layers=4, n_heads=6, clip_dim=embed_dim(clip),
                    null_condition=True)
    cfg = GPTTrainConfig(steps=steps, batch_size=32, cond_drop=0.1, cond_noise=0.6, log_every=10**6,
                         sample_every=10**6, checkpoint_every=10**6, precision=precision)

    def run(on_step):
        with tempfile.TemporaryDirectory() as out:
            train_transformer(open_dataset("shapes", 64), out, VQModel(vq), clip, gpt, cfg, on_step=on_step)
    return run


def galip_run(precision: str, steps: int):
    from studio.ml import BUNDLED_CLIP_FILE
    from studio_galip.commands import BUNDLED_CLIP
    from studio_galip.generator import open_clip_model
    from studio_galip.train import default_config, train_galip

    clip = open_clip_model(BUNDLED_CLIP, BUNDLED_CLIP_FILE)

    def run(on_step):
        with tempfile.TemporaryDirectory() as out:
            train_galip(out, "shapes", clip, config=default_config(clip), steps=steps, batch_size=32, log_every=1,
                        sample_every=10**6, save_every_s=10**9, precision=precision, show_progress=False,
                        on_metrics=on_step)
    return run


def cpu_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--threads", type=int, help="torch threads [default: torch's]")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    steps, rounds, warm = (6, 1, 2) if args.quick else (12, 2, 3)
    from studio.ml.precision import cpu_bf16_problem

    # Emulated bf16 runs ~20x slower than fp32; a --quick run (CI) would spend many minutes on it.
    native = cpu_bf16()
    emulated = cpu_bf16_problem() or (None if native else "oneDNN reports no native bfloat16 on this CPU")
    precisions = ("fp32",) if args.quick and emulated else ("fp32", "bf16")
    if len(precisions) == 1:
        print(f"bf16 left out of this --quick run: {emulated}", flush=True)
    nets = {"VQGAN tiny-f4c, batch 32": vqgan_run, "transformer 16x16, w192 l4, batch 32": transformer_run,
            "GALIP bundled config, batch 32": galip_run}
    rows = []
    for name, make in nets.items():
        times: dict[str, list[float]] = {precision: [] for precision in precisions}
        for _ in range(rounds):
            for precision in precisions:
                times[precision] += _step_times(make(precision, steps))[warm:]
        base = statistics.median(times["fp32"])
        for precision in precisions:
            median = statistics.median(times[precision])
            rows.append([name, precision, round(median, 3), f"{base / median:.2f}x", len(times[precision])])
    report("training_speed", f"training step, median seconds (threads {torch.get_num_threads()})",
           ["network", "precision", "s/step", "vs fp32", "steps timed"], rows,
           {"cpu_bf16": native, "threads": torch.get_num_threads(), "bf16_skipped": len(precisions) == 1})


if __name__ == "__main__":
    main()
