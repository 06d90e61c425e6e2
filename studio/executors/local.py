"""The in-process executor: run a job now, in this process, with a progress bar.

Zero services needed; the state machine and storage are the engine's, exactly as on a
Celery worker.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from studio.engine import Engine, JobInfo
from studio.plumbing import visible


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While a job runs here, SIGTERM and SIGHUP (a closed terminal, ``kill``) stop it as Ctrl-C
    does, so the job ends canceled instead of staying ``running`` after the process is gone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, interrupt)
        except (ValueError, OSError):  # pragma: no cover - not the main thread, or no such signal
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_local(engine: Engine, job: JobInfo, console: Console | None = None, show_progress: bool = True) -> JobInfo:
    with stop_signals_interrupt():
        return _run_local(engine, job, console, show_progress)


def _run_local(engine: Engine, job: JobInfo, console: Console | None = None, show_progress: bool = True) -> JobInfo:
    with run_display(console or Console(stderr=True, emoji=False), f"{job.model_id} x{job.count}", show_progress) as hooks:
        return engine.run(job.id, **hooks)


def generating_text(job: JobInfo, fraction: float) -> str:
    """``generating k of n``: the image being made, from the job's progress fraction."""
    n = max(1, job.count)
    k = min(n, int(fraction * n) + 1)
    return f"generating {k} of {n}" if n > 1 else "generating"


class RunDisplay:
    """A bar whose description says what a run is doing: the long waits (starting, loading the
    model's weights, comparing) as well as ``generating k of n``. A new stage redraws at once,
    so it shows even when it lasts less than a refresh."""

    def __init__(self, bar: Progress, label: str) -> None:
        self.bar, self.label, self.shown = bar, label, ""
        self.task = bar.add_task(self._describe("starting"), total=1.0)
        self.shown = "starting"

    def _describe(self, stage: str) -> str:
        return escape(visible(f"{self.label}: {stage}"))

    def status(self, stage: str) -> None:
        if stage == "generating":
            return  # the first progress step names the image
        self._show(stage)

    def progress(self, job: JobInfo, fraction: float) -> None:
        self.bar.update(self.task, completed=fraction)
        if fraction < 1.0:
            self._show(generating_text(job, fraction))

    def _show(self, stage: str) -> None:
        if stage != self.shown:
            self.shown = stage
            self.bar.update(self.task, description=self._describe(stage), refresh=True)


@contextlib.contextmanager
def run_display(console: Console, label: str, show: bool = True) -> Iterator[dict]:
    """The ``on_progress``/``on_status`` hooks of a run shown on ``console`` (a terminal), else none.

    Yields keyword arguments for :meth:`studio.engine.Engine.run`; ``hooks["on_status"]`` may also
    be called by the caller for its own stages (``comparing``).
    """
    if not show or not console.is_terminal:
        yield {}
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        display = RunDisplay(bar, label)
        yield {"on_progress": display.progress, "on_status": display.status}
