"""The test-only plugins, installed for one process (and its subprocesses) and nowhere else.

The test plugin (``tests/plugin``) and the example plugin (``examples/studio-example``) are
found through real entry points, as any installed plugin is, but they never enter the
user's environment: at the start of the run their package metadata (``*.dist-info`` with
``entry_points.txt``, taken from each ``pyproject.toml``) is written to a temporary folder,
which goes on ``sys.path`` together with the packages' source folders. ``PYTHONPATH`` carries
the same folders to the subprocesses the tests start (workers, ``studio`` itself). When the
run ends the folder is removed: a plain ``studio plugins`` afterwards sees only what the user
installed.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_PLUGINS = (ROOT / "tests" / "plugin", ROOT / "examples" / "studio-example")
#: The environment variable that names the folders added for the test run (so a test can take them away again).
ADDED_PATHS_VAR = "STUDIO_TEST_PLUGIN_PATHS"


def _dist_info(target: Path, project: Path) -> None:
    """Write ``NAME-VERSION.dist-info`` for the project in ``project/pyproject.toml``."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    name, version = meta["name"], meta["version"]
    folder = target / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {meta.get('description', '')}\n"
    )
    lines = []
    for group, points in meta.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines.extend(f"{key} = {value}" for key, value in points.items())
    (folder / "entry_points.txt").write_text("\n".join(lines) + "\n")


def activate() -> None:
    """Make the test plugins installed for this process and the subprocesses it starts."""
    if os.environ.get(ADDED_PATHS_VAR):  # a subprocess of the run: PYTHONPATH already has them
        return
    metadata = Path(tempfile.mkdtemp(prefix="studio-test-plugins-"))
    atexit.register(shutil.rmtree, metadata, ignore_errors=True)
    for project in TEST_PLUGINS:
        _dist_info(metadata, project)
    added = [str(metadata), *(str(p) for p in TEST_PLUGINS)]
    sys.path[:0] = added
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(added + ([previous] if previous else []))
    os.environ[ADDED_PATHS_VAR] = os.pathsep.join(added)
    import importlib

    importlib.invalidate_caches()



def without_test_plugins(env: dict[str, str]) -> dict[str, str]:
    """``env`` as the user's own environment: the folders :func:`activate` added taken out again."""
    env = dict(env)
    added = set(filter(None, env.pop(ADDED_PATHS_VAR, "").split(os.pathsep)))
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in added]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        env.pop("PYTHONPATH", None)
    return env
