"""Faster CPU kernels for GALIP's generator, as a recorded setting: ``cpu_kernels=fast``.

At batch 1 on a CPU most of GALIP's time is 3x3 convolutions on large maps, then the affine
modulations and LeakyReLUs that run over those maps between them. ``fast`` changes two things:

* **Winograd convolutions.** NNPACK's Winograd kernels run the large 3x3 layers 1.3-2x faster
  than PyTorch's default (oneDNN) ones at batch 1 (at 224 px, the 64-512 channel layers from
  32x32 maps up); on small layers they are slower, so only layers with enough work use them
  (:func:`eligible`): at 224 px most of the generator, in the bundled 64 px model none. PyTorch
  itself picks NNPACK only for batches of 16 and more.
* **Fused modulation.** Each of the fuse blocks' ``LeakyReLU(gamma * x + beta)`` runs as one
  ``addcmul`` and an in-place LeakyReLU: two passes over the map instead of three.

Both round differently from the plain ops (about 1e-5 of the output's range for Winograd, less
for ``addcmul``), so a pixel may move by one level (tested), and that is why the choice is a
model parameter stored in every recipe: an image regenerates with the kernels it was made with.
Images made before the parameter existed were made with ``exact`` (its ``unset_means``). On
other devices every op runs as in ``exact``; where PyTorch lacks NNPACK only the fusion applies
(the image's recipe says so).
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Iterator

#: The parameter's values: the faster kernels, or the plain PyTorch ops (the official numerics).
CPU_KERNELS = ("fast", "exact")
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


def flops(conv, height: int, width: int) -> int:
    """Multiply-adds x 2 of a 3x3 layer on one ``height`` x ``width`` map."""
    return 18 * conv.in_channels * conv.out_channels * height * width


def eligible(conv, x) -> bool:
    """Whether this layer runs Winograd on input ``x``: 3x3, stride 1, padding 1, at least
    ``MIN_FLOPS`` per image, on a float32 CPU batch under 16."""
    import torch

    return (
        conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
        and conv.padding == (1, 1) and conv.padding_mode == "zeros"
        and x.dim() == 4 and x.shape[0] < MAX_BATCH
        and flops(conv, x.shape[2], x.shape[3]) >= MIN_FLOPS
        and x.dtype == torch.float32 and x.device.type == "cpu" and conv.weight.device.type == "cpu"
    )


_LOCAL = threading.local()  # whether this thread's renders use the fast kernels
_INSTALL = threading.Lock()


def _fast_here() -> bool:
    return getattr(_LOCAL, "fast", False)


def _conv_forward(conv, x):
    """Conv2d.forward, or NNPACK's Winograd kernels where this thread asked and the layer gains."""
    import torch

    if _fast_here() and _LOCAL.winograd and eligible(conv, x):
        return torch._nnpack_spatial_convolution(x, conv.weight, conv.bias, [1, 1])
    return conv._conv_forward(x, conv.weight, conv.bias)


def _fuse_forward(block, x, c):
    """FuseBlock.forward, or each ``leaky_relu(gamma * x + beta)`` as addcmul + in-place LeakyReLU
    where this thread asked."""
    import torch
    import torch.nn.functional as F

    if not _fast_here():
        return type(block).forward(block, x, c)
    for affine in (block.affine0, block.affine1):
        gamma, beta = affine.modulation(c)
        x = F.leaky_relu_(torch.addcmul(beta, gamma, x), block.slope)
    return x


_INSTALLED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def install(module, max_side: int) -> bool:
    """Route ``module``'s fuse blocks and the 3x3 layers that could reach ``MIN_FLOPS`` on maps up
    to ``max_side`` through the dispatchers above (once per module). With no thread asking they
    run exactly their own forward. Returns whether any layer can use Winograd."""
    import functools

    import torch.nn as nn

    from .model import FuseBlock

    with _INSTALL:
        if module not in _INSTALLED:
            convs = [m for m in module.modules() if type(m) is nn.Conv2d and m.kernel_size == (3, 3)
                     and flops(m, max_side, max_side) >= MIN_FLOPS]
            for conv in convs:
                conv.forward = functools.partial(_conv_forward, conv)
            for block in (m for m in module.modules() if type(m) is FuseBlock):
                block.forward = functools.partial(_fuse_forward, block)
            _INSTALLED[module] = bool(convs)
        return _INSTALLED[module]


@contextmanager
def fast_kernels(module, enabled: bool = True, max_side: int = 4096) -> Iterator[bool]:
    """Run ``module`` (a GALIP generator) with the fast kernels inside the block, in this thread.

    ``max_side``: the largest map the module makes (its image size). The choice is per thread,
    so renders of one model in other threads keep their own kernels. Yields whether the setting
    is wholly in effect: False only where layers qualify for Winograd and PyTorch lacks NNPACK
    (the fusion still applies). The weights are never touched.
    """
    if not enabled:
        yield True
        return
    has_candidates = install(module, max_side)
    outer = (getattr(_LOCAL, "fast", False), getattr(_LOCAL, "winograd", False))
    _LOCAL.fast, _LOCAL.winograd = True, nnpack_available()
    try:
        yield _LOCAL.winograd or not has_candidates
    finally:
        _LOCAL.fast, _LOCAL.winograd = outer
