"""Building a network whose every weight is about to be overwritten, without filling it first.

A module's constructor fills its weights through ``torch.nn.init`` (``nn.Linear`` and
``nn.Embedding`` do, and so does open_clip's ``CLIP.init_parameters``); for a model that is then
loaded strictly from a file that work is wasted: for the bundled small CLIP it is most of its
loading time (its 49,408-row token table alone is 6.3M normal draws). Inside
:func:`without_random_init` those functions return their tensor untouched, so the weights are
whatever memory held, until the load that must follow replaces every one of them. (Parameters a
constructor draws directly, e.g. with ``torch.randn``, are still drawn.)

The first use wraps the ``torch.nn.init`` functions once for the process; a wrapper does nothing
only on a thread that is inside the context, so modules built on other threads meanwhile are
initialised as usual.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Iterator

_NAMES = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
          "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")
_state = threading.local()
_install_lock = threading.Lock()
_installed: set[str] = set()


def _skipping() -> bool:
    return getattr(_state, "depth", 0) > 0


def _install() -> None:
    import torch.nn.init as init

    with _install_lock:
        for name in _NAMES:
            if name in _installed or not hasattr(init, name):
                continue
            original = getattr(init, name)

            @functools.wraps(original)
            def wrapper(tensor, *args, _original=original, **kwargs):
                return tensor if _skipping() else _original(tensor, *args, **kwargs)

            setattr(init, name, wrapper)
            _installed.add(name)


@contextlib.contextmanager
def without_random_init() -> Iterator[None]:
    """Construct modules inside; load every parameter and buffer strictly before using them."""
    _install()
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
