"""Studio's errors: one family, so the CLI turns every expected failure into one line and an
exit code (never a traceback) by catching :class:`StudioError` alone.

Standard library only: every layer imports this module, the CLI before anything heavy.
Each error keeps the builtin base it always had (``ValueError``, ``LookupError``...), so code
that catches those still does.
"""


class StudioError(Exception):
    """Something went wrong at run time (exit code 1)."""

    exit_code = 1


class UsageError(StudioError):
    """The user asked for something invalid (exit code 2)."""

    exit_code = 2


class NotFound(StudioError):
    """An id that matches no job or image."""


class ConfigError(StudioError, ValueError):
    """A setting that cannot be used; the message is shown to the user as is."""


class DatabaseError(StudioError, RuntimeError):
    """The database cannot be used; the message is user-facing and names the URL (sans password)."""


class StoreError(StudioError, ValueError):
    """A file that cannot be read as a Studio image; the message names the file."""


class WeightsError(StudioError, ValueError):
    """A weights file that cannot be used; the message is one line, shown to the user as is."""


class InputError(StudioError, ValueError):
    """An input file that cannot be used; the message is one user-facing line."""


class UnknownModel(UsageError, LookupError):
    """A model id nobody registered; the message lists the known ones."""


class UnknownDataset(UsageError, LookupError, ValueError):
    """A dataset name nobody registered; the message lists the known ones."""


class ParamError(UsageError, ValueError):
    """A parameter value that does not fit the model's schema; the message is user-facing."""


class GenerationError(StudioError):
    """A generator's way to fail a job with a clear message (bad output, unusable weights...)."""


class JobCanceled(Exception):
    """Raised from a progress callback to stop a running job at a step boundary (not an error)."""
