"""The in-process executor: run a job now, in this process, with a progress bar.

Zero services needed; the state machine and storage are the engine's, exactly as on a
Celery worker.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from studio.engine import Engine, JobInfo
from studio.plumbing import visible


def run_local(engine: Engine, job: JobInfo, console: Console | None = None, show_progress: bool = True) -> JobInfo:
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
