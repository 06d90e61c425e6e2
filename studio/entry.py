"""The ``studio`` executable's entry point: :func:`studio.cli.run`, loaded so that a Ctrl-C ends it quietly.

Importing the command line takes a few tenths of a second (longer on a busy machine); a Ctrl-C in
that window would otherwise print Python's traceback. Here the process dies by the signal
instead, as an interrupted program should (a shell loop sees SIGINT and stops). Only the
executable goes through this module: ``import studio.cli`` from a program or a test keeps
Python's ``KeyboardInterrupt``.
"""

from __future__ import annotations


def run() -> None:
    try:
        from studio.cli import run as run_cli
    except KeyboardInterrupt:
        import os
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        raise SystemExit(130) from None  # where the signal does not end the process at once
    run_cli()
