"""CLI start time: `studio --help` and `studio jobs` beside `python -c pass`, in one run.

Usage: python benchmarks/startup.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import report


def timed(args: list[str], env: dict[str, str], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeat = 3 if args.quick else 15
    home = tempfile.mkdtemp(prefix="studio-bench-")
    env = dict(os.environ, STUDIO_HOME=home)
    studio = [sys.executable, "-m", "studio"]
    subprocess.run([*studio, "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL)
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "studio --help": [*studio, "--help"],
        "studio jobs": [*studio, "jobs"],
        "import torch": [sys.executable, "-c", "import torch"],
    }
    times = {name: timed(cmd, env, repeat) for name, cmd in cases.items()}
    base = times["python -c pass"]
    rows = [[name, round(t * 1000, 1), round(t / base, 2)] for name, t in times.items()]
    report("startup", f"CLI start time (median of {repeat})", ["command", "ms", "x python -c pass"], rows)


if __name__ == "__main__":
    main()
