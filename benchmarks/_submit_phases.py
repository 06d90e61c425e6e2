"""One cold `studio submit ARGS...` in this process, timed by phase; prints one JSON line on stdout's last line.

Used by startup.py (run in a fresh interpreter each time). The phases are the same work the plain
command does, in the same order: torch and open_clip are imported first (the submit would import
them while loading the model), then the CLI runs with the generator cache's ``get`` (model build
and weights), every ``generate`` and the runner's file storing wrapped in timers. Everything else
(interpreter, Studio's own imports, plugin registry, database) is the remainder of the wall time.
The run ends as the ``studio`` executable ends (:func:`studio.cli.run`: exit handlers, then an
exit that skips tearing torch down); the phases are printed by an exit handler, so they come out
before the process ends.
"""

from __future__ import annotations

import time

BEGIN = time.perf_counter()

import json  # noqa: E402


def main() -> None:
    phases = {"import torch": 0.0, "import open_clip": 0.0, "model load": 0.0, "generate": 0.0, "store": 0.0}
    from studio.plumbing import import_paused  # as the command imports them

    start = time.perf_counter()
    import_paused("torch")

    phases["import torch"] = time.perf_counter() - start
    start = time.perf_counter()
    import_paused("open_clip")  # the command imports it inside the model load's pause, frozen after it

    phases["import open_clip"] = time.perf_counter() - start

    import atexit

    from studio import loader, runner
    from studio.cli import run as cli_run

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            begun = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] += time.perf_counter() - begun

        return wrapper

    original_get = loader.GeneratorCache.get

    def get(self, spec, device):
        generator = timed("model load", original_get)(self, spec, device)
        if not getattr(generator, "_timed_generate", False):
            generator.generate = timed("generate", generator.generate)
            generator._timed_generate = True
        return generator

    loader.GeneratorCache.get = get
    runner.Runner._store_files = timed("store", runner.Runner._store_files)

    def report() -> None:  # the exit status is the process's own
        phases["in process"] = time.perf_counter() - BEGIN
        print(json.dumps({"phases": phases}), flush=True)

    atexit.register(report)
    cli_run()  # the executable's own ending: exit handlers (report among them), then the exit


if __name__ == "__main__":
    main()
