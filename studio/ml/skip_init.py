"""Building a network whose every weight is about to be overwritten, without drawing random ones.

A module's constructor fills its weights from ``torch.nn.init`` (``nn.Linear`` and
``nn.Embedding`` do, and so does open_clip's ``CLIP.init_parameters``); for a model that is then
loaded strictly from a file that work is wasted: for the bundled small CLIP it is most of its
loading time (its 49,408-row token table alone is 6.3M normal draws). Inside
:func:`without_random_init` those functions return their tensor untouched, so the weights are
whatever memory held, until the load that must follow replaces every one of them.

The functions are swapped module-wide for the duration (as other model libraries do for the same
reason), under a lock so two loads do not restore each other's state.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

_NAMES = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
          "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")
_lock = threading.RLock()


def _untouched(tensor, *args, **kwargs):
    return tensor


@contextlib.contextmanager
def without_random_init() -> Iterator[None]:
    """Construct modules inside; load every parameter and buffer strictly before using them."""
    import torch.nn.init as init

    with _lock:
        saved = {name: getattr(init, name) for name in _NAMES if hasattr(init, name)}
        try:
            for name in saved:
                setattr(init, name, _untouched)
            yield
        finally:
            for name, function in saved.items():
                setattr(init, name, function)
