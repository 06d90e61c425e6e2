"""The tests leave the user's environment as it was, and log lines never write over a live display."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_PLUGINS = {"testgen", "broken-import", "broken-register", "example"}


def users_environment() -> dict[str, str]:
    """This process's environment without the folders the test run added (tests/plugin_env.py)."""
    env = dict(os.environ)
    added = set(filter(None, env.pop("STUDIO_TEST_PLUGIN_PATHS", "").split(os.pathsep)))
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in added]
    env.pop("PYTHONPATH", None)
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    return env


def test_the_readme_test_command_installs_nothing():
    readme = (ROOT / "README.md").read_text()
    tests = re.findall(r"```bash\n(.*?)\n```", readme, re.S)[1]
    assert "pytest" in tests and "pip" not in tests and "tests/plugin" not in tests


def test_the_test_plugins_live_outside_the_environment():
    """Found through real entry points, from metadata outside site-packages."""
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    for name in ("studio-testgen", "studio-example"):
        dist = importlib.metadata.distribution(name)
        assert "testgen" in {ep.name for ep in dist.entry_points} or name == "studio-example"
        location = Path(dist._path).resolve()  # noqa: SLF001 - where the metadata lives
        assert site not in location.parents, f"{name} is installed in the environment ({location}); pip uninstall it"


@pytest.mark.parametrize("command", [["plugins", "--json"], ["models", "--json"]])
def test_plain_studio_after_the_tests_shows_only_real_plugins(command, studio_home):
    proc = subprocess.run([sys.executable, "-m", "studio", *command], env=users_environment(),
                          capture_output=True, text=True, timeout=120, cwd=studio_home.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no warning of any kind
    rows = json.loads(proc.stdout)
    names = {row.get("name") or row.get("plugin") for row in rows} | {row.get("id") for row in rows}
    assert not names & TEST_PLUGINS, names
    assert all(row.get("error") is None for row in rows if "error" in row)


@pytest.fixture(autouse=True)
def _no_handler_left():
    """setup_logging() adds to the root logger: take it off again for the tests after these."""
    yield
    from studio.cli import ConsoleHandler

    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, ConsoleHandler)]:
        root.removeHandler(handler)
    logging.captureWarnings(False)


def test_log_lines_go_through_the_console_and_wait_for_a_full_screen_app(monkeypatch):
    from rich.console import Console

    from studio.cli import ConsoleHandler, common, setup_logging  # noqa: F401

    recorded = Console(record=True, width=200, force_terminal=False)
    monkeypatch.setattr("studio.cli.err_console", recorded)
    monkeypatch.setattr(common, "err_console", recorded)
    setup_logging()
    assert sum(isinstance(h, ConsoleHandler) for h in logging.getLogger().handlers) == 1
    setup_logging()  # once only
    assert sum(isinstance(h, ConsoleHandler) for h in logging.getLogger().handlers) == 1
    log = logging.getLogger("studio.test")
    log.warning("plugin x failed in job_finished: boom")
    assert "plugin x failed in job_finished: boom" in recorded.export_text()
    with common.held_logs():
        log.warning("held back")
        assert "held back" not in recorded.export_text(clear=False)
    assert "held back" in recorded.export_text()


def test_a_warning_during_a_progress_bar_lands_above_it(monkeypatch):
    """rich moves a line printed through the console above a live bar: no garbled line."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from studio.cli import common, setup_logging

    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=True, width=80, color_system=None)
    monkeypatch.setattr("studio.cli.err_console", terminal)
    monkeypatch.setattr(common, "err_console", terminal)
    setup_logging()
    with Progress(console=terminal, auto_refresh=False) as bar:
        task = bar.add_task("job", total=2)
        bar.update(task, advance=1)
        bar.refresh()
        logging.getLogger("studio.test").warning("a warning mid-bar")
        bar.update(task, advance=1)
    lines = [line for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", buffer.getvalue()).split("\n") if line.strip()]
    warning = [line for line in lines if "a warning mid-bar" in line]
    assert warning and all(line.strip().startswith("WARNING") for line in warning), lines
