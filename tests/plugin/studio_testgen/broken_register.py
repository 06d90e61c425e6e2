"""A plugin whose hooks raise: its failure is recorded, the others still register."""

from studio.hookspecs import hookimpl


@hookimpl
def register_models(register):
    raise RuntimeError("broken-register fails on purpose")


@hookimpl
def job_finished(job, images):
    raise RuntimeError("listeners that fail never change a job")
