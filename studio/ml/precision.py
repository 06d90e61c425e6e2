"""Mixed precision for training: one switch that means the same on a CPU and on a GPU.

bfloat16 autocast keeps float32's range, so no loss scaling is needed and the same training
command runs on both. On CPUs with AMX (Intel Sapphire Rapids and later) oneDNN runs bfloat16
matrix products and convolutions an order of magnitude faster than float32; on CUDA it is the
usual mixed precision. Weights, optimiser state and losses stay float32; only the operations
autocast picks (products, convolutions) run in bfloat16.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import ContextManager

import torch

#: Every precision a trainer may offer; each trainer names the ones it supports.
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: CPU flags of native bfloat16 arithmetic (AMX tiles, AVX-512 BF16); without them oneDNN
#: emulates bf16 and a training step runs many times slower than in float32.
_CPU_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
log = logging.getLogger(__name__)
_warned: set[str] = set()  # warnings already given in this process (a command and its trainer both check)


def cpu_bf16_problem(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """Why bf16 training on this CPU would be slow, or None when it is native or unknown.

    Measured on a 2-core AMD EPYC with AVX2 only: a CLIP-GEN transformer step took 45 s in bf16
    against 2.2 s in float32, so the run should at least say so before it starts.
    """
    from studio.plumbing import cpu_flags

    flags = cpu_flags(cpuinfo)
    if flags is None or flags & _CPU_BF16_FLAGS:
        return None
    return ("this CPU has no bfloat16 arithmetic (no AMX or AVX-512 BF16), so bf16 is emulated and can run "
            "many times slower than fp32 (a CLIP-GEN transformer step: 45 s against 2.2 s on an AVX2-only CPU); "
            "train with --precision fp32")


def autocast(device: str | torch.device, precision: str) -> ContextManager:
    """The context a training step's forward pass runs in; ``fp32`` is a no-op.

    It only maps the name to a dtype; whether the pair makes sense for a run is
    :func:`check_training`'s question, asked once before the run starts.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision])


def check_training(device: str, precision: str = "fp32", choices: tuple[str, ...] = ("fp32", "bf16")) -> str:
    """``device`` and ``precision`` checked before a run starts; returns the device.

    One set of rules for every trainer: ``cpu`` or a CUDA device this machine has; fp16 (which
    needs loss scaling) on CUDA only; bf16 on a GPU only where it has bfloat16 arithmetic, and
    a logged warning for bf16 on a CPU that would only emulate it.
    """
    from studio.plumbing import cuda_device_problem

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"training runs on cpu or cuda, not {device!r}")
    if parsed.type == "cuda":
        problem = cuda_device_problem(device)
        if problem is not None:
            raise ValueError(f"--device {device}: {problem}; use cpu")
    if precision not in choices:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(choices)}")
    if precision == "fp16" and parsed.type != "cuda":
        raise ValueError("fp16 mixed precision needs a CUDA device; use bf16 on the CPU")
    if precision == "bf16" and parsed.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        other = " or fp16" if "fp16" in choices else ""
        raise ValueError(f"this GPU has no bfloat16 arithmetic; train with --precision fp32{other}")
    if precision == "bf16" and parsed.type == "cpu":
        problem = cpu_bf16_problem()
        if problem is not None and problem not in _warned:  # a warning, not a refusal: right, only slow
            _warned.add(problem)
            log.warning("--precision bf16: %s", problem)
    return device
