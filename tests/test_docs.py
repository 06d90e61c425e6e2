"""Docs that match the code: every hook is documented, the README's commands are what CI runs."""

import inspect
import re
from pathlib import Path

from studio import hookspecs

ROOT = Path(__file__).resolve().parents[1]


def test_every_hook_is_documented_with_its_arguments():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "studio_spec")]
    assert set(hooks) == {"register_models", "register_commands", "register_datasets", "job_finished"}
    for name in hooks:
        args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### {name}({args})" in doc, name


def test_readme_first_commands_install_pinned_torch_and_run_tests():
    readme = (ROOT / "README.md").read_text()
    install, tests = re.findall(r"```bash\n(.*?)\n```", readme, re.S)[:2]
    assert "pip install torch==2.14.1 torchvision==0.29.1" in install
    assert "studio submit" in install
    assert "pytest" in tests
    assert "block 1" in (ROOT / ".ci" / "run").read_text() and "block 2" in (ROOT / ".ci" / "run").read_text()
