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
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bfloat16; train with --precision fp32")
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)

