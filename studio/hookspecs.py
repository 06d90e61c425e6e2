"""The plugin contract. Every hook here is documented in docs/plugins.md and tested.

Plugins are ordinary Python distributions that declare an entry point in the group
``studio``; the entry point names a module (or object) holding ``@hookimpl`` functions.
Hooks receive a ``register`` callback instead of returning values, so one plugin may
register any number of models or datasets and errors can be pinned on the plugin.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("studio")
hookimpl = pluggy.HookimplMarker("studio")


@hookspec
def register_models(register):
    """Register generators: call ``register(ModelSpec(...))`` once per model.

    Must be cheap: build nothing heavy here (no torch import); put the work in the
    spec's ``factory``, which the engine calls only when a job needs the model.
    """


@hookspec
def register_commands(cli):
    """Add click commands or groups to the ``studio`` CLI, e.g. ``cli.add_command(group)``."""


@hookspec
def register_datasets(register):
    """Register training datasets: call ``register(DatasetSpec(...))`` once per dataset."""


@hookspec
def job_finished(job, images):
    """Fire-and-forget event after a job ends (any final status).

    ``job`` is a :class:`studio.api.JobInfo` snapshot, ``images`` a list of
    :class:`studio.api.ImageInfo`. Exceptions raised here are logged and never change
    the job's outcome.
    """
