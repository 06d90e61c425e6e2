"""``studio worker`` and ``studio queue``: bad input is one line, and Celery stays off light paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from studio.cli import add_plugin_commands, cli

pytestmark = pytest.mark.usefixtures("testgen_installed")

UNREACHABLE = "redis://127.0.0.1:9/0"


@pytest.fixture
def run(monkeypatch):
    monkeypatch.setenv("STUDIO_LOAD_PLUGINS", "testgen")
    add_plugin_commands(cli)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("broker", "args", "code", "message"),
    [
        (None, ["worker"], 2, "no broker configured: set STUDIO_BROKER_URL"),
        (None, ["queue"], 2, "no broker configured"),
        (None, ["queue", "reconcile"], 2, "no broker configured"),
        (UNREACHABLE, ["worker", "-Q", "testgen,nope"], 2, "unknown model 'nope' in --queues (installed: testgen)"),
        (UNREACHABLE, ["worker", "--device", "gpu"], 2, "--device must be cpu, cuda, cuda:N or auto, got 'gpu'"),
        (UNREACHABLE, ["queue", "reconcile"], 1, f"cannot reach the broker {UNREACHABLE}"),
        (UNREACHABLE, ["queue", "ping"], 1, "sent a heartbeat recently"),
        ("amqp://127.0.0.1:9//", ["queue", "reconcile"], 1, "the broker must be Redis; 'amqp' is not supported"),
    ],
)
def test_bad_input_is_one_line(run, monkeypatch, broker, args, code, message):
    if broker:
        monkeypatch.setenv("STUDIO_BROKER_URL", broker)
    result = run(*args)
    assert result.exit_code == code, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_submit_with_an_unreachable_broker_keeps_the_job_queued(run, monkeypatch, engine):
    monkeypatch.setenv("STUDIO_BROKER_URL", UNREACHABLE)
    result = run("submit", "kept", "-m", "testgen")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "is stored as queued" in result.stderr and "studio queue reconcile" in result.stderr
    (job,) = engine.list_jobs()
    assert job.status == "queued" and job.id in result.stderr


def test_queue_shows_the_database_view_when_the_broker_is_down(run, monkeypatch, engine):
    monkeypatch.setenv("STUDIO_BROKER_URL", UNREACHABLE)
    engine.submit("waiting", "testgen")
    data = json.loads(run("queue", "--json").output)
    assert data["broker_error"] and data["queues"] == [
        {"queue": "studio.testgen", "model_id": "testgen", "waiting": None, "queued": 1, "running": 0}
    ]
    assert data["workers"] == [] and data["running"] == [] and data["failures"] == []


def test_celery_is_not_imported_on_light_paths(studio_home):
    env = dict(os.environ, STUDIO_HOME=str(studio_home), STUDIO_BROKER_URL=UNREACHABLE)
    code = (
        "import sys; from studio.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted({'celery', 'kombu', 'redis', 'torch'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
        "sys.exit(code)\n"
    )
    for args in (["--help"], ["jobs"], ["worker", "--help"], ["queue", "--help"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (args, proc.stderr)
