"""The ``studio`` command line: parse, call the engine, print with rich. Nothing else.

One package, the only place that imports click: :mod:`studio.cli.common` holds the group,
the per-invocation app object, the consoles and the output helpers; each other module adds
one group of core commands to that group with its decorators (importing it is registering
it), and the group imports a module when one of its commands is asked for
(:data:`studio.cli.common.CORE_COMMANDS`). Plugins add theirs through the
``register_commands`` hook. torch is never imported on
the paths of ``--help``, ``jobs``, ``show``, ``models``, ``plugins`` and ``config``, and the
database layer not on those of ``--help``, ``models``, ``plugins`` and ``config``.
"""

from __future__ import annotations

import logging
import os

from studio.cli import common
from studio.cli.common import App, CommandError, add_plugin_commands, cli, console, err_console, pass_app, print_json

__all__ = ["App", "CommandError", "add_plugin_commands", "cli", "console", "err_console", "main", "pass_app",
           "print_json", "run"]


class _OneLineFormatter(logging.Formatter):
    """Warnings on the terminal stay one line; tracebacks only with STUDIO_DEBUG=1."""

    def __init__(self, debug: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.debug = debug

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return super().formatException(ei) if self.debug else ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.debug:
            return text
        if record.name == "py.warnings":  # "file:line: Category: message" and the source line under it
            return text.splitlines()[0]
        return text.rstrip()


class ConsoleHandler(logging.Handler):
    """Log records printed through the stderr console, never straight onto the terminal.

    A live display (a progress bar) owns that console, so a warning lands above the bar
    instead of through it; while a full-screen app runs (the gallery), records are held and
    printed when it ends (:func:`studio.cli.common.held_logs`).
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            held = common.held_records
            if held is not None:
                held.append(text)
                return
            err_console.print(text, markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging() -> None:
    debug = os.environ.get("STUDIO_DEBUG", "") not in ("", "0")
    root = logging.getLogger()
    if any(isinstance(h, ConsoleHandler) for h in root.handlers):
        return
    handler = ConsoleHandler()
    handler.setFormatter(_OneLineFormatter(debug))
    root.addHandler(handler)
    logging.captureWarnings(True)  # Python warnings take the same way, not a raw write to stderr
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cli.main(args=argv, prog_name="studio")


def run() -> None:
    """The ``studio`` executable: :func:`main`, then an exit that skips tearing torch down.

    Once torch and open_clip are loaded, the interpreter spends about 0.2 s after the last line
    of a command freeing their objects one by one (a tenth of a cold ``studio submit``), for a
    process that is ending anyway. So when torch was imported and no other thread is left, the
    output is flushed, the exit handlers run as usual, and then the process ends at once with
    the command's exit status (120 if the output could not be written, as Python's own exit).
    Nothing is left unwritten: Studio writes files through context managers and commits every
    database change before a command returns. Without torch the ordinary exit is just as fast.
    """
    import sys
    import threading

    try:
        main()
    except SystemExit as exc:
        if "torch" not in sys.modules or threading.active_count() > 1:
            raise
        code = exc.code
    else:  # pragma: no cover - click's standalone mode always exits
        code = 0
    _exit_now(code)


def _exit_now(code) -> None:
    import atexit
    import sys

    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    code = int(code or 0)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # a full disk, a closed pipe: the output is incomplete
        code = code or 120
    atexit._run_exitfuncs()  # logging.shutdown, temporary folders, pools: what an exit runs first
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
