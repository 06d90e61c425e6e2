"""The example plugin, installed through its entry point and driven like any plugin."""

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("studio_example", reason="run from the repository: the root conftest.py installs the example for the test run")

from studio import api  # noqa: E402


@pytest.fixture
def example_only(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))
    monkeypatch.setenv("STUDIO_LOAD_PLUGINS", "example")
    monkeypatch.delenv("STUDIO_DATABASE_URL", raising=False)
    monkeypatch.delenv("STUDIO_BROKER_URL", raising=False)
    return tmp_path


def test_the_plugin_registers_through_its_entry_point(example_only):
    from studio.plugins import load_registry

    registry = load_registry(only=("example",))
    assert registry.plugins["example"].ok
    assert registry.plugins["example"].models == ["example-stripes"]
    assert registry.plugins["example"].datasets == ["example-stripes"]


def test_a_job_makes_reproducible_images(example_only):
    engine = api.engine()
    first = engine.run(engine.submit("a striped flag", "example-stripes", seed=3, count=2, params={"stripes": "3"}).id)
    again = engine.run(engine.submit("a striped flag", "example-stripes", seed=3, count=2, params={"stripes": "3"}).id)
    assert first.status == again.status == "succeeded"
    assert [i.sha256 for i in engine.images(first.id)] == [i.sha256 for i in engine.images(again.id)]
    assert engine.images(first.id)[0].recipe["extra"] == {"stripes": 3}


def test_the_command_and_the_cli(example_only):
    from studio.cli import add_plugin_commands, cli

    add_plugin_commands(cli)
    runner = CliRunner()
    result = runner.invoke(cli, ["example", "colours", "x", "--stripes", "2"])
    assert result.exit_code == 0 and len(result.output.split()) == 2
    made = runner.invoke(cli, ["submit", "x", "-m", "example-stripes", "-p", "size=8", "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["status"] == "succeeded"
    bad = runner.invoke(cli, ["submit", "x", "-m", "example-stripes", "-p", "stripes=11"])
    assert bad.exit_code == 2


def test_its_dataset_opens_through_the_registry(example_only):
    pytest.importorskip("torch")
    data = api.open_dataset("example-stripes", size=8)
    assert len(data) == 16 and data[0]["image"].shape == (3, 8, 8)
