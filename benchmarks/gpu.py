"""GPU: both bundled generators on CUDA in float32, float16 and bfloat16 at batch 1, 8 and 64.

Per generator, dtype and batch: images/s (median of a few runs after a warm-up), peak GPU memory,
and that figure as a fraction of the card's peak FLOP rate (FLOPs per image counted once with
torch's FlopCounterMode; peak rates from the table below, by card name). float16/bfloat16 run the
float32 weights under ``torch.autocast`` (the generators' own code is unchanged). Then the worker's
per-job overhead on CUDA (a one-image job through the engine, less its generate call), and the
regen check per dtype: the same request twice gives the same bytes, and how far (in 8-bit levels)
each dtype lands from float32.

Without CUDA it prints one line and exits 0 (so `run_all.py --quick` passes on CPU machines).
Usage: python benchmarks/gpu.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

#: Dense peak TFLOP/s (float32 without tensor cores, float16/bfloat16 tensor cores), by name fragment.
PEAK_TFLOPS = {
    "H200": {"float32": 67.0, "float16": 989.0, "bfloat16": 989.0},
    "H100": {"float32": 67.0, "float16": 989.0, "bfloat16": 989.0},
    "A100": {"float32": 19.5, "float16": 312.0, "bfloat16": 312.0},
    "L4": {"float32": 30.3, "float16": 121.0, "bfloat16": 121.0},
    "A10": {"float32": 31.2, "float16": 125.0, "bfloat16": 125.0},
    "T4": {"float32": 8.1, "float16": 65.0, "bfloat16": None},
}
PROMPT = "a red circle above a blue square"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu.py: no CUDA device here; nothing measured")
        return 0
    from common import report

    name = torch.cuda.get_device_name(0)
    peaks = next((v for k, v in PEAK_TFLOPS.items() if k in name), {})
    dtypes = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
    batches = (1, 8) if args.quick else (1, 8, 64)
    rows, figures = [], {"device": name, "peak_tflops": peaks, "generators": {}}
    for model_id, make in _generators().items():
        gen = make()
        gen.load("cuda")
        flops = _flops_per_image(gen)
        fig = figures["generators"][model_id] = {"flops_per_image": flops, "runs": {}, "regen": {}}
        reference = None
        for dname, dtype in dtypes.items():
            for batch in batches:
                try:
                    rate, peak_mem = _throughput(gen, dtype, batch, 2 if args.quick else 5)
                except Exception as exc:  # noqa: BLE001 - one failing setting is a row, not a crash
                    rows.append([model_id, dname, batch, "error", str(exc).splitlines()[0][:80], ""])
                    continue
                util = (rate * flops / 1e12 / peaks[dname]) if flops and peaks.get(dname) else None
                fig["runs"][f"{dname}/{batch}"] = {"images_per_s": rate, "peak_mib": peak_mem, "fraction_of_peak": util}
                rows.append([model_id, dname, batch, rate, peak_mem, f"{util:.2%}" if util is not None else "?"])
            first, second = _image(gen, dtype), _image(gen, dtype)
            reference = first if reference is None else reference
            diff = int((first.astype("int16") - reference.astype("int16")).__abs__().max())
            fig["regen"][dname] = {"same_bytes_twice": first.tobytes() == second.tobytes(), "max_levels_from_float32": diff}
        fig["worker_overhead_s"] = _worker_overhead(model_id)
        del gen
        torch.cuda.empty_cache()
    report("gpu", f"Generators on {name}", ["model", "dtype", "batch", "images/s", "peak MiB", "of peak FLOP/s"],
           rows, {"figures": figures})
    return 0


def _generators() -> dict:
    from studio.api import load_settings
    from studio.plugins import get_registry

    registry = get_registry(load_settings().load_plugins)
    return {mid: registry.model(mid).factory for mid in ("galip", "clip-gen") if mid in registry.models}


def _requests(batch: int):
    from studio.generators import Request

    return [Request(PROMPT, i, {}, index=i) for i in range(batch)]


def _run(gen, dtype, requests):
    import torch

    with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        out = gen.generate(requests, lambda _d, _t: None)
    torch.cuda.synchronize()
    return out


def _throughput(gen, dtype, batch: int, repeat: int) -> tuple[float, float]:
    import torch

    requests = _requests(batch)
    _run(gen, dtype, requests)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        _run(gen, dtype, requests)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times), torch.cuda.max_memory_allocated() / 2**20


def _flops_per_image(gen) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            _run(gen, None, _requests(1))
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - the utilisation column is then "?"
        return None


def _image(gen, dtype):
    import numpy as np

    return np.asarray(_run(gen, dtype, _requests(1))[0].image)


def _worker_overhead(model_id: str) -> float | None:
    """Seconds a one-image job takes through the engine beyond the generator's own call (warm model)."""
    try:
        import os
        import tempfile

        os.environ["STUDIO_HOME"] = tempfile.mkdtemp(prefix="studio-gpu-")
        os.environ["STUDIO_DEVICE"] = "cuda"
        from studio.api import load_settings
        from studio.engine import Engine
        from studio.executors import dispatch
        from studio.cli.jobs import run_here
        from studio.loader import generators

        engine = Engine(load_settings())
        spent = []
        for _ in range(3):
            job = engine.submit(PROMPT, model_id, seed=len(spent))
            start = time.perf_counter()
            dispatch(engine, job, run_here(engine, show_progress=False))
            spent.append(time.perf_counter() - start)
        gen = generators.get(engine.registry.model(model_id), "cuda")
        start = time.perf_counter()
        _run(gen, None, _requests(1))
        return statistics.median(spent) - (time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001
        print(f"worker overhead not measured: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return None


if __name__ == "__main__":
    sys.exit(main())
