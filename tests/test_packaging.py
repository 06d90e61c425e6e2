"""A non-editable install carries its migrations and can create the schema on its own."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_install_migrates_without_the_source_tree(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("studio-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    code = (
        "import studio, sys; assert studio.__file__.startswith(sys.argv[1]), studio.__file__\n"
        "from studio.db.session import open_database; from studio.db import migrate\n"
        "db = open_database(sys.argv[2]); print(migrate.current_revision(db))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, "-c", code, str(target), f"sqlite:///{tmp_path / 'w.db'}"],
        env=env, cwd=tmp_path, check=True, capture_output=True, text=True,
    ).stdout.strip()
    from studio.db.migrate import HEAD

    assert out == HEAD
