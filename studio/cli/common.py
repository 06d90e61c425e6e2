"""What every command module of the CLI shares: the ``studio`` group, the per-invocation
:class:`App`, the consoles, ``pass_app`` and the output helpers.

Imported when ``studio`` starts: click, rich and the standard library only at the top; the
engine, the database and the store load inside the commands that need them. Errors are one
family (:class:`studio.errors.StudioError`), so the group catches that one type; SQLAlchemy's
errors are recognised only once SQLAlchemy is loaded, so a command that never touches the
database imports nothing of it.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from studio.config import Settings, load_settings
from studio.errors import ConfigError, StudioError, UsageError

if TYPE_CHECKING:
    from studio.engine import Engine
    from studio.records import JobInfo

__all__ = ["App", "CommandError", "add_plugin_commands", "cli", "console", "err_console", "pass_app", "print_json",
           "parse_params", "status_style", "short_time", "follow", "report_finished", "run_here", "shown", "shown_json", "check_local_device", "check_out_dir",
           "STATUS_CHOICES", "held_logs", "find_job"]


def shown(value: Any) -> str:
    """Text from a user or a file (a prompt, an id, a path, a model name, an error, a recipe field),
    ready to go into rich markup: shown literally, with control characters made visible.

    Every command prints such text through this one helper: ``[bold]`` or ``[/x]`` in a prompt
    is printed as typed (never formatting, never a MarkupError), and ESC, BEL, OSC title
    sequences or C1 codes never reach the terminal raw (see :func:`studio.plumbing.visible`).
    """
    from rich.markup import escape

    from studio.plumbing import visible

    return escape(visible(value))


def shown_json(data: Any) -> str:
    """``data`` as indented JSON for the terminal, each line through :func:`shown`."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return "\n".join(shown(line) for line in text.splitlines())

class _Console:
    """A rich ``Console`` made on first use: commands that print nothing never import rich.

    Emoji codes are off: ``:smile:`` in a prompt is shown as typed, like any other text.
    """

    def __init__(self, **options: Any) -> None:
        self._options = {"emoji": False, **options}
        self._console = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)

    # Dunder methods are looked up on the type, not through __getattr__: a live display
    # (rich.progress) enters the console to redraw at once.
    def __enter__(self) -> Any:
        return self.__getattr__("__enter__")()

    def __exit__(self, *exc: Any) -> Any:
        return self.__getattr__("__exit__")(*exc)


console: Any = _Console()
err_console: Any = _Console(stderr=True)
STATUS_CHOICES = ["queued", "running", "succeeded", "failed", "canceled"]
#: Log lines kept back while a full-screen app owns the terminal (see :func:`held_logs`).
held_records: list[str] | None = None


@contextmanager
def held_logs():
    """Hold log lines while a full-screen app owns the terminal; print them once it is gone."""
    global held_records
    outer, held_records = held_records, []
    try:
        yield
    finally:
        lines, held_records = held_records, outer
        for line in lines:
            err_console.print(line, markup=False, highlight=False, soft_wrap=True)


class App:
    """Per-invocation state, created lazily so ``--help`` costs nothing."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._engine = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def engine(self) -> "Engine":
        if self._engine is None:
            from studio.engine import Engine

            self._engine = Engine(self.settings)
        return self._engine


pass_app = click.make_pass_decorator(App, ensure=True)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def parse_params(items: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param takes key=value, got {item!r}")
        params[key.strip()] = value
    return params


def status_style(status: str) -> str:
    from studio.records import status_style as style  # the job records, loaded when a status is shown

    return style(status)


def short_time(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


class CommandError(click.ClickException):
    """One red line on stderr and an exit code; how every expected failure ends."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        err_console.print(f"[red]error:[/] {shown(self.format_message())}", highlight=False, soft_wrap=True)


def database_error(exc: BaseException) -> str | None:
    """The one-line reason of a SQLAlchemy error, or None for anything else (SQLAlchemy not imported here)."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is None or not isinstance(exc, sa_exc.SQLAlchemyError):
        return None
    from studio.plumbing import one_line

    return one_line(getattr(exc, "orig", None) or exc)


def add_plugin_commands(group: click.Group) -> None:
    """Let every loaded plugin add its commands (a failure is shown by `studio plugins`)."""
    from studio.plugins import get_registry

    group.plugins_added = True
    try:
        settings = load_settings()
    except ConfigError:
        return  # reported when a command needs the settings
    try:
        registry = get_registry(settings.load_plugins)
    except ConfigError:
        return  # reported when a command needs the plugins
    registry.call_each("register_commands", lambda _name: {"cli": group})


#: The module of :mod:`studio.cli` that defines each core command; importing the module registers
#: its commands on :func:`cli` (``tests/test_cli.py`` checks this table against the modules).
CORE_COMMANDS = {
    "submit": "jobs", "jobs": "jobs", "show": "jobs", "wait": "jobs", "cancel": "jobs", "retry": "jobs",
    "gallery": "gallery", "regen": "gallery", "vary": "gallery", "check": "gallery", "export": "gallery",
    "import": "gallery",
    "models": "models", "plugins": "models", "config": "models",
    "train": "ml", "eval": "ml",
    "worker": "workers", "queue": "workers",
    "db": "db", "doctor": "doctor",
}


class StudioGroup(click.Group):
    """Turns Studio's errors, in core and plugin commands alike, into :class:`CommandError`.

    Commands load on demand, so a command pays only for its own imports: a core command's
    module is imported when that command is looked up (:data:`CORE_COMMANDS`), and a plain
    core command (``jobs``, ``config``...) runs without loading any plugin; listing the
    commands, a core group (plugins add subcommands to ``train`` and ``models import``) or a
    name the core does not know loads the plugins first.
    """

    plugins_added = False

    def _with_plugins(self) -> None:
        if not self.plugins_added:
            add_plugin_commands(self)

    def _core(self, name: str) -> click.Command | None:
        module = CORE_COMMANDS.get(name)
        if module is not None and name not in self.commands:
            import importlib

            importlib.import_module(f"studio.cli.{module}")
        return self.commands.get(name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._with_plugins()
        return sorted(set(super().list_commands(ctx)) | set(CORE_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = self._core(name)
        if command is None or isinstance(command, click.Group):
            self._with_plugins()
            command = super().get_command(ctx, name)
        return command

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # a bad option of `studio` itself
            raise one_line_usage(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            check_arguments([*getattr(ctx, "_protected_args", []), *ctx.args])
            return super().invoke(ctx)
        except StudioError as exc:
            raise CommandError(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise click.exceptions.Abort() from None
        except click.exceptions.NoArgsIsHelpError:
            raise
        except CommandError:
            raise
        except click.UsageError as exc:
            raise one_line_usage(exc) from None
        except click.ClickException as exc:  # a plugin command's error: shown like ours (literally, one line)
            raise CommandError(exc.format_message(), exc.exit_code) from None
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OSError as exc:
            if is_debug():
                raise
            raise CommandError(os_error(exc)) from None
        except Exception as exc:
            reason = database_error(exc)
            if reason is not None:
                raise CommandError(f"database error: {reason}") from None
            if is_debug():
                raise
            from studio.plumbing import one_line

            raise CommandError(f"internal error: {type(exc).__name__}: {one_line(exc, 300)} "
                               "(STUDIO_DEBUG=1 shows the traceback)") from None


def check_arguments(args: list[str]) -> None:
    """Every argument is valid UTF-8: Python hands undecodable bytes over as lone surrogates, which
    no database stores; refused with exit 2 (a path to an existing file may hold any bytes)."""
    import os

    from studio.plumbing import visible

    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            if os.path.lexists(arg):
                continue
            raise CommandError(f"argument '{visible(arg)}' is not valid UTF-8 (undecodable bytes at character "
                               f"{exc.start + 1})", 2) from None


def is_debug() -> bool:
    import os

    return os.environ.get("STUDIO_DEBUG", "") not in ("", "0")


def os_error(exc: OSError) -> str:
    """An OSError as one line: what failed and on which file."""
    reason = exc.strerror or type(exc).__name__
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{reason}: {' -> '.join(names)}" if names else reason


def one_line_usage(exc: click.UsageError) -> CommandError:
    """click's usage error (usage, hint, blank line, message) as one line with exit code 2."""
    lines = [line.strip() for line in exc.format_message().splitlines() if line.strip()]
    where = exc.ctx.command_path if exc.ctx is not None else "studio"
    return CommandError(f"{lines[0] if lines else 'invalid usage'} (see `{where} -h`)", 2)


@click.group(cls=StudioGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="studio", prog_name="studio")
def cli() -> None:
    """Studio: text-to-image generation with pluggable models, a job queue and a gallery.

    Every image keeps its full recipe (prompt, model, weights, seed, parameters), so any of
    them can be made again exactly.
    """


# ---- ids --------------------------------------------------------------------------------------


def find_job(engine: "Engine", ident: str, quiet: bool = False):
    """(job, image or None) for a job or image id (or a unique prefix); says so when it was an image."""
    job, image = engine.lookup(ident)
    if image is not None and not quiet:
        err_console.print(f"{image.id} is image {image.index} of job {job.id}", highlight=False, soft_wrap=True)
    return job, image


# ---- running jobs and showing how they ended ----------------------------------------------------


def check_local_device(app: App) -> None:
    """Before a job that will run here is stored: the configured device must exist on this machine."""
    from studio.executors import uses_broker

    if not uses_broker(app.settings):
        app.settings.resolve_device()


def check_out_dir(out_dir: Path | None) -> None:
    """``--out``: a folder that exists (or can be made) and is writable, checked before the job runs."""
    import os

    if out_dir is None:
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out_dir}: cannot make this folder ({exc.strerror or exc})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out_dir}: this folder is not writable")


def run_here(engine: "Engine", show_progress: bool = True) -> "Callable[[JobInfo], JobInfo]":
    """How a job runs in this process when there is no broker: with a progress bar on the terminal."""
    from studio.executors.local import run_local

    return lambda job: run_local(engine, job, err_console, show_progress=show_progress)


def follow(engine: "Engine", job_id: str) -> "JobInfo":
    """Wait for a job with a progress bar on the terminal."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    if not err_console.is_terminal:
        return engine.wait(job_id)
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(shown(job_id), total=1.0)

        def update(job) -> None:
            bar.update(task, completed=job.fraction, description=shown(f"{job.id} {follow_stage(job)}"))

        return engine.wait(job_id, on_update=update)


def follow_stage(job: "JobInfo") -> str:
    """What a job another process runs is doing, as far as its row tells: before its first step a
    worker is starting or loading the model's weights, then it is generating image k of n."""
    if job.status != "running":
        return job.status
    if job.fraction <= 0:
        return "running: starting, loading model weights"
    from studio.executors.local import generating_text

    return f"running: {generating_text(job, job.fraction)}"


def _draws_things(engine: "Engine", model_id: str) -> bool:
    """Whether the model says what it draws (``ModelSpec.draws``): such a model is checked for
    drawing nothing. Models that paint plain fields by design (test models) say nothing."""
    try:
        return bool(engine.registry.model(model_id).draws)
    except Exception:  # an unknown or broken model: nothing to judge by
        return False


def warn_blank(images, home: Path) -> None:
    """One warning line per image that came out a near-blank canvas (see :mod:`studio.canvas`).

    The job still succeeded (the model ran as asked), but a picture of nothing is worth saying.
    """
    from PIL import Image

    from studio.canvas import is_near_blank

    for image in images:
        try:
            with Image.open(home / image.path) as img:
                blank = is_near_blank(img)
        except OSError:
            continue  # a damaged file is reported elsewhere
        if blank:
            err_console.print(f"[yellow]warning:[/] image {image.index} of job {shown(image.job_id)} is a near-blank "
                              "canvas: the model drew nothing it could tell apart from the background for this prompt")


def report_finished(engine: "Engine", job: "JobInfo", out_dir: Path | None, as_json: bool) -> None:
    """Print a finished job's images (paths, or JSON), copy them to ``out_dir``; exit 1 unless it succeeded."""
    images = engine.images(job.id) if job.status == "succeeded" else []
    home = engine.settings.home
    copies = []
    if out_dir is not None and images:
        from studio import store
        from studio.plumbing import write_atomic

        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for image in images:
                target = out_dir / f"{job.id}-{image.index}.png"
                write_atomic(target, store.read_verified(home, image.path, image.sha256))
                copies.append(str(target))
        except OSError as exc:
            raise StudioError(f"job {job.id} succeeded, but its images cannot be copied to {out_dir} "
                              f"({exc.strerror or exc}); they are in the store: `studio show {job.id}`") from None
    if as_json:
        data = job.as_dict()
        data["images"] = [dict(i.as_dict(), file=str(home / i.path)) for i in images]
        if copies:
            data["copies"] = copies
        print_json(data)
    elif job.status == "succeeded":
        for image in images:
            console.print(shown(home / image.path), soft_wrap=True)
        if _draws_things(engine, job.model_id):
            warn_blank(images, home)
        for copy in copies:
            console.print(f"copied to {shown(copy)}", soft_wrap=True)
        err_console.print(f"[green]job {shown(job.id)} succeeded[/] ({len(images)} image{'s' if len(images) != 1 else ''})")
    if job.status != "succeeded":
        raise StudioError(f"job {job.id} {job.status}: {job.error or 'no reason recorded'}")
