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
    console = console or Console(stderr=True)
    if not show_progress or not console.is_terminal:
        return engine.run(job.id)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(escape(visible(f"{job.model_id} x{job.count}")), total=1.0)
        return engine.run(job.id, on_progress=lambda _job, fraction: bar.update(task, completed=fraction))
