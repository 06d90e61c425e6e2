"""What every benchmark shares: machine facts, a rich table, and a JSON file in results/."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


def use_test_plugins() -> None:
    """Install the test plugin for this process and its subprocesses only (``tests/plugin_env.py``),
    as the test run does: nothing is left in the environment afterwards."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "plugin_env.py"
    spec = importlib.util.spec_from_file_location("studio_plugin_env", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.activate()


def best_time(fn, repeat: int, min_seconds: float = 0.0, max_runs: int = 50) -> float:
    """Best of at least ``repeat`` runs after a warm-up: the minimum is the figure least disturbed
    by other load. With ``min_seconds``, fast calls repeat until that much time has passed
    (``max_runs`` at most)."""
    fn()
    best, runs, begun = float("inf"), 0, time.perf_counter()
    while runs < repeat or (runs < max_runs and time.perf_counter() - begun < min_seconds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        runs += 1
    return best


def machine() -> dict[str, Any]:
    """The machine facts every result file carries (``studio.plumbing.hardware``)."""
    from studio.plumbing import hardware

    return hardware()


def report(name: str, title: str, columns: list[str], rows: list[list[Any]], extra: dict[str, Any] | None = None) -> Path:
    """Print the table and write ``results/NAME.json``; returns the JSON path.

    A ``--quick`` run writes ``results/NAME.quick.json`` instead (ignored by git), so checking that
    a benchmark still runs never replaces the figures of a full run.
    """
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / (f"{name}.quick.json" if "--quick" in sys.argv[1:] else f"{name}.json")
    data = {
        "benchmark": name,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "columns": columns,
        "rows": rows,
        **(extra or {}),
    }
    path.write_text(json.dumps(data, indent=2, default=str))
    return path
