"""Loaded generators, kept per process: loading weights is the slow part, so do it once.

Bounded (least recently used first out) so a worker serving many models does not keep
every one of them in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from studio.generators import GenerationError, Generator, ModelSpec
from studio.plumbing import collector_paused

DEFAULT_MAX_LOADED = 2


class GeneratorCache:
    def __init__(self, max_loaded: int = DEFAULT_MAX_LOADED) -> None:
        self.max_loaded = max(1, max_loaded)
        self._items: OrderedDict[tuple[str, str], Generator] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec, device: str) -> Generator:
        key = (spec.id, device)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        generator = spec.factory()
        if not isinstance(generator, Generator):
            raise GenerationError(f"model {spec.id!r}: its factory returned {type(generator).__name__}, not a Generator")
        with collector_paused(freeze=True):
            generator.load(device)
        with self._lock:
            self._items[key] = generator
            while len(self._items) > self.max_loaded:
                self._items.popitem(last=False)
        return generator

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._items)


#: The process-wide cache used by the executors.
generators = GeneratorCache()
