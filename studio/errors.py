"""Errors the CLI turns into one line and an exit code, never a traceback."""


class StudioError(Exception):
    """Something went wrong at run time (exit code 1)."""

    exit_code = 1


class UsageError(StudioError):
    """The user asked for something invalid (exit code 2)."""

    exit_code = 2


class NotFound(StudioError):
    """An id that matches no job or image."""
