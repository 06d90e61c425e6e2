"""The import rules of docs and issue 15, held by import-linter (contracts in pyproject.toml):
cli over executors/gallery over the engine over store/db over the contract; plugins through
studio.api (and studio.ml) only; the core names no plugin; no cycles. Plus: only studio/cli
imports click."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]' installs import-linter")
    proc = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_only_the_cli_package_imports_click():
    offenders = []
    for path in (ROOT / "studio").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "studio").parts[:1]:
            continue
        for line in path.read_text().splitlines():
            if line.strip().startswith(("import click", "from click")):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
