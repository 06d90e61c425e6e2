"""Mixed precision for training: one switch that means the same on a CPU and on a GPU.

bfloat16 autocast keeps float32's range, so no loss scaling is needed and the same training
command runs on both. On CPUs with AMX (Intel Sapphire Rapids and later) oneDNN runs bfloat16
matrix products and convolutions an order of magnitude faster than float32; on CUDA it is the
usual mixed precision. Weights, optimiser state and losses stay float32; only the operations
autocast picks (products, convolutions) run in bfloat16.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

PRECISIONS = ("fp32", "bf16")


def autocast(device: str | torch.device, precision: str) -> ContextManager:
    """The context a training step's forward pass runs in; ``fp32`` is a no-op."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if device_type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError("this GPU has no bfloat16 arithmetic; train with --precision fp32 (or fp16 where offered)")
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def training_device(device: str) -> str:
    """``device`` checked before a run starts: ``cpu``, or a CUDA device this machine has."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cpu":
        return device
    if parsed.type != "cuda":
        raise ValueError(f"training runs on cpu or cuda, not {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this machine has no usable CUDA device; use cpu")
    if (parsed.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device

