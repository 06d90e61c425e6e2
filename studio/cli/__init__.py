"""The ``studio`` command line: parse, call the engine, print with rich. Nothing else.

One package, the only place that imports click: :mod:`studio.cli.common` holds the group,
the per-invocation app object, the consoles and the output helpers; each other module adds
one group of core commands to that group with its decorators (importing it is registering
it). Plugins add theirs through the ``register_commands`` hook. torch is never imported on
the paths of ``--help``, ``jobs``, ``show``, ``models``, ``plugins`` and ``config``, and the
database layer not on those of ``--help``, ``models``, ``plugins`` and ``config``.
"""

from __future__ import annotations

import logging
import os
import sys

from studio.cli import db, gallery, jobs, ml, models, workers  # noqa: F401 - registers the core commands
from studio.cli.common import App, CommandError, add_plugin_commands, cli, console, err_console, pass_app, print_json

__all__ = ["App", "CommandError", "add_plugin_commands", "cli", "console", "err_console", "main", "pass_app",
           "print_json"]


class _OneLineFormatter(logging.Formatter):
    """Warnings on the terminal stay one line; tracebacks only with STUDIO_DEBUG=1."""

    def __init__(self, debug: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.debug = debug

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return super().formatException(ei) if self.debug else ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if self.debug else text.rstrip()


def setup_logging() -> None:
    debug = os.environ.get("STUDIO_DEBUG", "") not in ("", "0")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(debug))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cli.main(args=argv, prog_name="studio")
