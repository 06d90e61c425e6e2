"""`studio gallery` without a terminal, and what the CLI imports at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_plain_and_json_pages_with_filters(run, make):
    for i in range(5):
        make(f"red ball {i}", seed=i)
    make("blue box", count=2)
    make("broken", fail="error")
    table = run("gallery")  # not a terminal: a table, not the browser
    assert table.exit_code == 0 and "red ball 4" in table.stdout and "broken" in table.stdout
    entries = json.loads(run("gallery", "--json", "-q", "red", "--limit", "3").stdout)
    assert [e["prompt"] for e in entries] == ["red ball 4", "red ball 3", "red ball 2"]
    assert all(os.path.isfile(e["file"]) for e in entries)
    rest = json.loads(run("gallery", "--json", "-q", "red", "--after", entries[-1]["key"]).stdout)
    assert [e["prompt"] for e in rest] == ["red ball 1", "red ball 0"]
    failed = json.loads(run("gallery", "--json", "--status", "failed").stdout)
    assert [(e["prompt"], e["image_id"]) for e in failed] == [("broken", None)]
    assert json.loads(run("gallery", "--json", "--since", "1d", "-m", "testgen").stdout)
    assert json.loads(run("gallery", "--json", "--until", "2001-01-01").stdout) == []
    more = run("gallery", "--plain", "--limit", "2")
    assert "more: studio gallery --plain --after" in more.stderr
    assert "no images match" in run("gallery", "--plain", "-q", "zebra").stdout
    bad = run("gallery", "--since", "someday")
    assert bad.exit_code == 2 and "not a date" in bad.stderr
    assert run("gallery", "--after", "junk").exit_code == 2


def test_cli_start_imports_neither_textual_nor_torch():
    code = (
        "import sys\n"
        "from studio.cli import cli\n"
        "try:\n    cli.main(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "cli.main(['gallery', '--help'], standalone_mode=False)\n"
        "bad = [m for m in ('textual', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "gallery" in result.stdout and "--plain" in result.stdout
