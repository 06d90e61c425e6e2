"""CLI start time: `studio --help`, `plugins`, `config` and `jobs` beside `python -c pass`, in one run.

Paired runs: every round runs each command once, in turn, so load on the machine falls on all
of them alike; the figure is the median per command and its ratio to `python -c pass`. The
targets (issue 15) are printed next to the ratios: `--help` <= 3x, `plugins` and `config` <= 4x,
`jobs` <= 8x, all on a fresh home; `jobs` on a migrated database is shown beside them.

A cold `studio submit "a red circle" --model galip` (a fresh process on a migrated home, the file
cache warm) is timed as a whole, and split into phases by running the same command through
`_submit_phases.py` in a fresh interpreter: importing torch, importing open_clip, model load
(build + weights + checks), generate, store (PNG + records), and the rest (interpreter, Studio's
own imports, plugins, database). "ours" is the wall time less the two third-party imports.

The processes run with bytecode caching on (PYTHONDONTWRITEBYTECODE removed, one warm-up run
first), as an installed package runs: otherwise every run would compile Studio's own modules
again while the libraries load from their caches. The "floor" rows import only the libraries a
command cannot do without (click and pluggy, which imports importlib.metadata, plus the entry
point scan for the commands that list plugins; rich for those that print tables), so they show
how much of each figure is Studio's.

Usage: python benchmarks/startup.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import report

FLOOR_PLUGINS = "import click, pluggy, importlib.metadata as m; m.entry_points(group='studio')"

#: The most each command may take, in multiples of `python -c pass`.
TARGETS = {"studio --help": 3.0, "studio plugins": 4.0, "studio config": 4.0, "studio jobs": 8.0}


def paired(cases: dict[str, tuple[list[str], dict[str, str]]], rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (args, env) in cases.items():
            start = time.perf_counter()
            subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            samples[name].append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = 3 if args.quick else 15
    unset = ("STUDIO_DATABASE_URL", "STUDIO_BROKER_URL", "PYTHONDONTWRITEBYTECODE")
    base_env = {k: v for k, v in os.environ.items() if k not in unset}
    fresh = dict(base_env, STUDIO_HOME=tempfile.mkdtemp(prefix="studio-bench-fresh-"))  # nothing made yet
    used = dict(base_env, STUDIO_HOME=tempfile.mkdtemp(prefix="studio-bench-used-"))  # a migrated database
    studio = os.path.join(os.path.dirname(sys.executable), "studio")
    command = [studio] if os.path.exists(studio) else [sys.executable, "-m", "studio"]
    subprocess.run([*command, "db", "upgrade"], env=used, check=True, stdout=subprocess.DEVNULL)
    cases = {
        "python -c pass": ([sys.executable, "-c", "pass"], fresh),
        "studio --help": ([*command, "--help"], fresh),
        "studio plugins": ([*command, "plugins"], fresh),
        "studio config": ([*command, "config"], fresh),
        "studio jobs": ([*command, "jobs"], fresh),
        "studio jobs (migrated database)": ([*command, "jobs"], used),
        "import torch": ([sys.executable, "-c", "import torch"], fresh),
        "floor: click + pluggy + entry points": ([sys.executable, "-c", FLOOR_PLUGINS], fresh),
        "floor: click + rich": ([sys.executable, "-c", "import click, rich.console, rich.table"], fresh),
    }
    paired(cases, 1)  # warm-up: bytecode caches written, files in the page cache
    samples = paired(cases, rounds)
    times = {name: statistics.median(values) for name, values in samples.items()}
    base = times["python -c pass"]
    ratios = {name: round(t / base, 2) for name, t in times.items()}
    rows = []
    for name, t in times.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else ("ok" if ratios[name] <= target else "over")
        rows.append([name, round(t * 1000, 1), ratios[name], f"<= {target:g}" if target else "", verdict])
    submit = cold_submit(command, used, 2 if args.quick else 5)
    for name, seconds in submit["phases_ms"].items():
        rows.append([f"cold submit --model galip: {name}", seconds, "", "", ""])
    report("startup", f"CLI start time (median of {rounds} paired rounds; cold submit: {submit['rounds']} rounds)",
           ["command", "ms", "x python -c pass", "target", ""], rows,
           extra={"ratios": ratios, "targets": TARGETS, "rounds": rounds,
                  "within_targets": all(ratios[n] <= t for n, t in TARGETS.items()), "cold_submit": submit})


SUBMIT = ["submit", "a red circle", "--model", "galip"]


def cold_submit(command: list[str], env: dict[str, str], rounds: int) -> dict:
    """Wall time of a cold submit (median), and its phases (medians over as many instrumented runs)."""
    driver = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_submit_phases.py")]
    walls, split_walls, phases = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([*command, *SUBMIT], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        start = time.perf_counter()
        done = subprocess.run([*driver, *SUBMIT], env=env, check=True, capture_output=True, text=True)
        split_walls.append(time.perf_counter() - start)
        phases.append(json.loads(done.stdout.strip().splitlines()[-1])["phases"])
    median = {name: statistics.median(p[name] for p in phases) for name in phases[0] if name != "in process"}
    split_wall = statistics.median(split_walls)
    median["other (interpreter, Studio imports, plugins, database, CLI)"] = max(0.0, split_wall - sum(median.values()))
    wall = statistics.median(walls)
    ours = split_wall - median["import torch"] - median["import open_clip"]
    out = {"wall (plain studio submit)": wall, "wall (instrumented run)": split_wall, **median,
           "ours (wall less torch and open_clip imports)": ours}
    return {"rounds": rounds, "command": "studio " + " ".join(SUBMIT),
            "phases_ms": {name: round(seconds * 1000, 1) for name, seconds in out.items()}}


if __name__ == "__main__":
    main()
