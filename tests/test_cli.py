"""The CLI through click's runner, plus real subprocesses where the process boundary matters."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from studio.cli import add_plugin_commands, cli
from studio.db import migrate

pytestmark = pytest.mark.usefixtures("testgen_installed")


@pytest.fixture
def run(monkeypatch):
    # Only the test plugins: the results must not depend on which generators are installed.
    monkeypatch.setenv("STUDIO_LOAD_PLUGINS", "testgen,broken-import,broken-register")
    add_plugin_commands(cli)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_submit_show_jobs_round_trip(run, studio_home, tmp_path):
    out = tmp_path / "out"
    result = run("submit", "a blue thing", "-m", "testgen", "-n", "2", "--seed", "3", "-p", "size=8", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    job = json.loads(result.output)
    assert job["status"] == "succeeded" and len(job["images"]) == 2
    assert all(os.path.exists(i["file"]) for i in job["images"])
    assert sorted(p.name for p in out.iterdir()) == [f"{job['id']}-0.png", f"{job['id']}-1.png"]

    shown = json.loads(run("show", job["id"], "--json").output)
    assert shown["images"][1]["recipe"]["seed"] == 4
    listed = json.loads(run("jobs", "--json").output)
    assert [j["id"] for j in listed] == [job["id"]]
    text = run("show", job["id"]).output
    assert "a blue thing" in text and "succeeded" in text
    assert run("wait", job["id"]).exit_code == 0


def test_plain_submit_prints_image_paths(run, studio_home):
    result = run("submit", "x", "-m", "testgen")
    assert result.exit_code == 0
    paths = [line for line in result.stdout.splitlines() if line.endswith(".png")]
    assert len(paths) == 1 and os.path.isfile(paths[0]) and paths[0].startswith(str(studio_home))


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["submit", "x", "-m", "nope"], 2, "unknown model 'nope'; known models: testgen"),
        (["submit", "x", "-m", "galip"], 2, "galip plugin is not installed"),
        (["submit", "", "-m", "testgen"], 2, "the prompt is empty"),
        (["submit", "x" * 3000, "-m", "testgen"], 2, "the limit is 2000"),
        (["submit", "x", "-m", "testgen", "--seed", "-5"], 2, "seed must be between"),
        (["submit", "x", "-m", "testgen", "-p", "size=9999"], 2, "must be <= 512"),
        (["submit", "x", "-m", "testgen", "-p", "size=big"], 2, "must be int"),
        (["submit", "x", "-m", "testgen", "-p", "size"], 2, "takes key=value"),
        (["submit", "x", "-m", "testgen", "-p", "fail=error"], 1, "failed: testgen was asked to fail"),
        (["show", "01XXXXXXXXXXXXXXXXXXXXXXXX"], 1, "no job or image with id"),
        (["cancel", "nope"], 1, "no job or image with id"),
        (["submit", "x", "--seed", "abc"], 2, "is not a valid integer"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(run, args, code, message):
    result = run(*args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_failed_command_keeps_what_was_stored(run):
    ok = json.loads(run("submit", "kept", "-m", "testgen", "--json").output)
    assert run("submit", "x", "-m", "testgen", "-p", "fail=exception").exit_code == 1
    assert run("submit", "x", "-m", "testgen", "-p", "size=1").exit_code == 2
    shown = json.loads(run("show", ok["id"], "--json").output)
    assert shown["status"] == "succeeded" and os.path.isfile(shown["images"][0]["file"])
    assert [j["status"] for j in json.loads(run("jobs", "--json").output)] == ["failed", "succeeded"]


def test_models_plugins_config_and_plugin_commands(run, studio_home):
    models = json.loads(run("models", "--json").output)
    assert [m["id"] for m in models] == ["testgen"]
    assert models[0]["params"][1] == {"name": "size", "type": "int", "default": 16, "min": 4, "max": 512, "choices": None, "help": "image side in pixels"}
    plugins = {p["name"]: p for p in json.loads(run("plugins", "--json").output)}
    assert plugins["broken-import"]["error"].startswith("failed to load")
    assert "broken-import" in run("plugins").output
    config = json.loads(run("config", "--json").output)
    assert config["home"] == str(studio_home) and config["broker_url"] is None
    assert run("testgen-hello", "ada").output == "hello ada from testgen\n"


def test_db_commands(run):
    assert "current: empty" in run("db", "current").output
    assert f"at revision {migrate.HEAD}" in run("db", "upgrade").output
    assert "at revision base" in run("db", "downgrade", "base").output
    bad = run("db", "upgrade", "nope")
    assert bad.exit_code == 2 and "cannot upgrade to 'nope'" in bad.stderr


def test_cancel_queued_job_from_the_cli(run, engine):
    job = engine.submit("p", "testgen")
    assert "canceled" in run("cancel", job.id).output
    assert engine.get(job.id).status == "canceled"
    result = run("cancel", job.id)
    assert result.exit_code == 2 and "already canceled" in result.stderr


def test_unreachable_database_is_one_line(run, monkeypatch):
    monkeypatch.setenv("STUDIO_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/none")
    result = run("jobs")
    assert result.exit_code == 1 and "cannot reach database" in result.stderr and "Traceback" not in result.output


def test_real_subprocess_and_no_torch_on_the_light_paths(studio_home):
    env = dict(os.environ, STUDIO_HOME=str(studio_home))
    code = (
        "import sys; from studio.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(code)\n"
    )
    for args in (["--help"], ["jobs"], ["models"], ["plugins"], ["config"], ["show", "--help"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (args, proc.stderr)
    studio = os.path.join(os.path.dirname(sys.executable), "studio")
    proc = subprocess.run([studio, "submit", "a red x", "-m", "testgen", "-p", "size=4"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().endswith(".png")
    proc = subprocess.run([studio, "submit", "x", "-m", "nope"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown model" in proc.stderr


def test_the_executable_ends_at_once_after_torch_with_all_output_and_the_right_status(studio_home, tmp_path):
    """With torch loaded the process ends without the interpreter's teardown: the exit handlers
    still run, every line reaches the pipe, the database holds the job, the status is the command's."""
    env = dict(os.environ, STUDIO_HOME=str(studio_home))
    marker = tmp_path / "exit-handler-ran"
    code = (
        "import atexit, pathlib, sys, torch\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).touch)\n"
        "from studio.cli import run\n"
        "sys.argv[0] = 'studio'\n"
        "run()\n"
        "raise AssertionError('run() returned')\n"
    )
    many = [sys.executable, "-c", code, "submit", "a red x", "-m", "testgen", "-p", "size=4", "-n", "40", "--json"]
    proc = subprocess.run(many, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)  # the whole document, though the process skipped its teardown
    assert job["status"] == "succeeded" and len(job["images"]) == 40 and marker.is_file()
    listed = subprocess.run([sys.executable, "-m", "studio", "jobs", "--json"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert job["id"] in listed.stdout
    proc = subprocess.run([sys.executable, "-c", code, "submit", "x", "-m", "nope"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown model" in proc.stderr
    if os.path.exists("/dev/full"):  # output that cannot be written is a failure, not success
        buffered = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-c", code, "jobs", "--json"], env=buffered, stdout=full,
                                  stderr=subprocess.PIPE, text=True, timeout=60)
        assert proc.returncode != 0


def test_eval_applies_params_to_every_image_and_rejects_bad_ones(run, studio_home):
    result = run("eval", "-m", "testgen", "--n", "4", "-p", "size=24", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["params"]["size"] == 24 and report["n"] == 4
    assert sum(part["shape"]["n"] for part in report["by_objects"].values()) == 4
    table = run("eval", "-m", "testgen", "--n", "4", "-p", "size=24")
    assert table.exit_code == 0 and "1 object" in table.output and "2 objects" in table.output
    for bad, words in ((("-p", "size=huge"), "size"), (("-p", "nosuch=1"), "nosuch"), (("-p", "size"), "key=value")):
        result = run("eval", "-m", "testgen", "--n", "4", *bad)
        assert result.exit_code != 0
        assert words in result.output and "Traceback" not in result.output


def test_models_show_explains_a_model(run):
    out = run("models", "show", "testgen")
    assert out.exit_code == 0, out.output
    assert "steps" in out.stdout and "1..1000" in out.stdout and "progress steps" in out.stdout
    assert "vocabulary" in out.stdout
    data = json.loads(run("models", "show", "testgen", "--json").stdout)
    assert data["id"] == "testgen" and {p["name"] for p in data["params"]} >= {"steps", "size"}
    assert run("models", "show", "nope").exit_code != 0


def test_models_is_a_short_table(run):
    out = run("models")
    assert out.exit_code == 0 and "testgen" in out.stdout and "progress steps" not in out.stdout


def test_the_core_command_table_names_each_command_with_the_module_that_defines_it():
    import importlib
    import pkgutil

    import studio.cli
    from studio.cli.common import CORE_COMMANDS

    for info in pkgutil.iter_modules(studio.cli.__path__):
        importlib.import_module(f"studio.cli.{info.name}")
    defined = {name: command.callback.__module__ for name, command in cli.commands.items()
               if command.callback.__module__.startswith("studio.cli.")}
    assert defined == {name: f"studio.cli.{module}" for name, module in CORE_COMMANDS.items()}


def test_a_core_command_imports_only_its_own_module():
    code = ("import sys; from studio.cli import main\n"
            "try:\n    main(['config', '--json'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('studio.cli.')), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.strip().splitlines()[-1] == "['studio.cli.common', 'studio.cli.models']"
