"""Engine overhead per job, in-process: submit -> run -> stored PNG, with the test plugin.

The test generator's own time is measured apart (generate() alone) and subtracted, so the
figure is what the engine adds: validation, rows, progress, the PNG write, the final commit.
Usage: python benchmarks/engine_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from common import report, use_test_plugins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    use_test_plugins()  # the test plugin, for this run only
    jobs = 20 if args.quick else 200

    from studio.config import load_settings
    from studio.engine import Engine
    from studio.generators import Request

    home = tempfile.mkdtemp(prefix="studio-bench-")
    engine = Engine(load_settings({"STUDIO_HOME": home, "STUDIO_LOAD_PLUGINS": "testgen", "STUDIO_DEVICE": "cpu"}))
    spec = engine.registry.model("testgen")
    generator = engine.cache.get(spec, "cpu")
    engine.run(engine.submit("warm up", "testgen").id)

    gen_times, total_times, submit_times = [], [], []
    for i in range(jobs):
        start = time.perf_counter()
        job = engine.submit(f"prompt {i}", "testgen", seed=i, params={"size": 16})
        submitted = time.perf_counter()
        engine.run(job.id)
        total_times.append(time.perf_counter() - start)
        submit_times.append(submitted - start)
        request = Request(f"prompt {i}", i, dict(job.params))
        g0 = time.perf_counter()
        generator.generate([request], lambda d, t: None)
        gen_times.append(time.perf_counter() - g0)

    total = statistics.median(total_times) * 1000
    gen = statistics.median(gen_times) * 1000
    rows = [
        ["submit (validate + insert)", round(statistics.median(submit_times) * 1000, 2)],
        ["submit -> stored PNG (total)", round(total, 2)],
        ["generate() alone", round(gen, 2)],
        ["engine overhead (total - generate)", round(total - gen, 2)],
    ]
    report("engine_overhead", f"Engine overhead per job, SQLite, median of {jobs}", ["step", "ms"], rows,
           {"target_ms": 20})


if __name__ == "__main__":
    main()
