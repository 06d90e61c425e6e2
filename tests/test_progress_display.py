"""Long waits show what is happening: loading the model's weights, generating k of n, comparing."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from studio.engine import Engine
from studio.executors.local import generating_text, run_local
from studio.gallery import actions
from studio.loader import GeneratorCache

pytestmark = pytest.mark.usefixtures("testgen_installed")


@pytest.fixture
def fresh(settings):
    """An engine with a generator cache of its own, as in a new process."""
    eng = Engine(settings, cache=GeneratorCache())
    yield eng
    if eng._db is not None:
        eng._db.dispose()


def test_a_run_says_when_it_loads_the_weights(fresh):
    stages: list[str] = []
    first = fresh.submit("a red square", "testgen", seed=1, params={"size": "8"})
    assert fresh.run(first.id, on_status=stages.append).status == "succeeded"
    assert stages == ["loading model weights", "generating"]
    stages.clear()
    second = fresh.submit("a red square", "testgen", seed=2, params={"size": "8"})
    fresh.run(second.id, on_status=stages.append)
    assert stages == ["generating"]  # loaded once per process: nothing to wait for


@pytest.mark.parametrize("lazy", [False, True], ids=["console", "the CLI's lazy console"])
def test_the_terminal_shows_loading_then_generating_k_of_n(fresh, lazy):
    from studio.cli.common import _Console

    out = io.StringIO()
    console = (_Console if lazy else Console)(file=out, force_terminal=True, width=120)
    job = fresh.submit("a red square", "testgen", seed=1, count=3, params={"size": "8", "steps": "6"})
    assert run_local(fresh, job, console).status == "succeeded"
    text = out.getvalue()
    assert "testgen x3: loading model weights" in text
    assert "generating 1 of 3" in text and "generating 2 of 3" in text and "generating 3 of 3" in text
    assert text.index("loading model weights") < text.index("generating 1 of 3")

    quiet = io.StringIO()  # not a terminal (a pipe, a script): nothing is drawn
    run_local(fresh, fresh.submit("x", "testgen", seed=2, params={"size": "8"}), Console(file=quiet))
    assert quiet.getvalue() == ""


def test_generating_text(fresh):
    job = fresh.submit("p", "testgen", seed=1, count=4, params={"size": "8"})
    assert [generating_text(job, f) for f in (0.0, 0.3, 0.5, 0.99)] == [
        "generating 1 of 4", "generating 2 of 4", "generating 3 of 4", "generating 4 of 4"]
    one = fresh.submit("p", "testgen", seed=1, params={"size": "8"})
    assert generating_text(one, 0.5) == "generating"


def test_verify_reports_its_stages(fresh, settings):
    job = fresh.run(fresh.submit("a red circle", "testgen", seed=3, count=2, params={"size": "8"}).id)
    later = Engine(settings, cache=GeneratorCache())  # `studio regen --verify` is a new process
    stages: list[str] = []
    fractions: list[float] = []
    result = actions.verify(later, actions.source(later, job.id), on_status=stages.append,
                            on_progress=lambda _job, fraction: fractions.append(fraction))
    assert result.ok and stages == ["loading model weights", "generating", "comparing"]
    assert fractions and fractions[-1] == 1.0
    later.db.dispose()


def test_follow_names_the_stage_of_a_job_run_elsewhere(fresh):
    from dataclasses import replace

    from studio.cli.common import follow_stage

    job = fresh.submit("p", "testgen", seed=1, count=4, params={"size": "8"})
    assert follow_stage(job) == "queued"
    running = replace(job, status="running")
    assert follow_stage(running) == "running: starting, loading model weights"
