"""Faster CPU convolutions for GALIP's generator: NNPACK's Winograd kernels for its large 3x3 layers.

At batch 1 on a CPU, most of GALIP's time is 3x3 convolutions on large maps (at 224 px, the
64-512 channel layers from 32x32 up to 224x224), where NNPACK's Winograd kernels run 1.3-2x
faster than PyTorch's default (oneDNN) ones; on small layers they are slower, so only the
layers with enough work use them (:func:`eligible`): at 224 px most of the generator, in the
bundled 64 px model none (its pixels do not change). Winograd rounds differently: the float
output moves by about 1e-5 of its range, so a pixel is at most one level off the default
kernels' (tested). PyTorch itself picks NNPACK only for batches of 16 and more.

That is why the choice is a model parameter, ``cpu_convs`` (``winograd`` or ``exact``), stored
in every recipe: an image regenerates with the kernels it was made with. Images made before the
parameter existed were made with ``exact`` (its ``unset_means``). On other devices, and where
PyTorch lacks NNPACK, every layer runs the default kernels (the image's recipe says which ran).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

#: The parameter's values: PyTorch's default kernels, or NNPACK's Winograd kernels where they gain.
CPU_CONVS = ("winograd", "exact")
#: The least work (multiply-adds x 2, per image) of a layer that gains from Winograd. Measured on
#: a 2-core AVX2 CPU at batch 1: every 3x3 layer of the 224 px generator from 3.7 GFLOP up ran
#: 1.3-2x faster (64-512 channels, 32x32 to 224x224 maps); those of 1.2 GFLOP and less ran
#: 0.2-0.7x (8x8 and 16x16 maps, the 3-channel output layer), as did the bundled 64 px model's.
MIN_FLOPS = 2e9
#: PyTorch's own NNPACK threshold: from this batch size on it may choose NNPACK by itself.
MAX_BATCH = 16


def nnpack_available() -> bool:
    import torch

    return bool(getattr(torch, "_nnpack_available", lambda: False)())


def eligible(conv, x) -> bool:
    """Whether this layer runs Winograd on input ``x``: 3x3, stride 1, padding 1, at least
    ``MIN_FLOPS`` per image, on a float32 CPU batch under 16."""
    import torch

    return (
        conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
        and conv.padding == (1, 1) and conv.padding_mode == "zeros"
        and x.dim() == 4 and x.shape[0] < MAX_BATCH
        and 18 * conv.in_channels * conv.out_channels * x.shape[2] * x.shape[3] >= MIN_FLOPS
        and x.dtype == torch.float32 and x.device.type == "cpu" and conv.weight.device.type == "cpu"
    )


def _winograd_forward(conv, x):
    import torch

    if eligible(conv, x):
        return torch._nnpack_spatial_convolution(x, conv.weight, conv.bias, [1, 1])
    return conv._conv_forward(x, conv.weight, conv.bias)


_CANDIDATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def candidates(module, max_side: int) -> list:
    """The 3x3 layers of ``module`` that could reach ``MIN_FLOPS`` on maps up to ``max_side``
    (found once per module: the small models have none, and then nothing is patched)."""
    import torch.nn as nn

    found = _CANDIDATES.get(module)
    if found is None or found[0] != max_side:
        convs = [m for m in module.modules() if type(m) is nn.Conv2d and m.kernel_size == (3, 3)
                 and 18 * m.in_channels * m.out_channels * max_side * max_side >= MIN_FLOPS]
        found = _CANDIDATES[module] = (max_side, convs)
    return found[1]


@contextmanager
def winograd_convs(module, enabled: bool = True, max_side: int = 4096) -> Iterator[bool]:
    """Run ``module``'s eligible convolutions with NNPACK's Winograd kernels inside the block.

    ``max_side``: the largest map the module makes (its image size). Yields whether the
    setting is in effect (False where disabled or where PyTorch lacks NNPACK). The layers'
    weights are untouched; leaving the block restores their own forward.
    """
    import functools

    active = enabled and nnpack_available()
    convs = candidates(module, max_side) if active else []
    for conv in convs:
        conv.forward = functools.partial(_winograd_forward, conv)
    try:
        yield active
    finally:
        for conv in convs:
            del conv.forward
