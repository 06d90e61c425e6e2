"""studio doctor: one line per check, exit 0 when all pass and 1 otherwise, --json."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from studio.cli import add_plugin_commands, cli

pytestmark = pytest.mark.usefixtures("testgen_installed")


@pytest.fixture
def doctor(monkeypatch):
    monkeypatch.setenv("STUDIO_LOAD_PLUGINS", "testgen")
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    add_plugin_commands(cli)
    return lambda *args: CliRunner().invoke(cli, ["doctor", *args], catch_exceptions=False)


def test_a_healthy_setup_passes_with_one_line_per_check(doctor, engine):
    engine.db  # the database exists and is migrated
    out = doctor()
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    names = [line.split()[1] for line in lines]
    assert lines and all(line.startswith("ok") for line in lines), lines
    assert {"database", "broker", "device", "plugin", "model", "disk"} <= set(names)
    data = json.loads(doctor("--json").stdout)
    assert {c["name"] for c in data} >= {"database", "broker", "device", "plugin testgen", "model testgen", "disk"}
    assert all(c["ok"] for c in data)


def test_failures_exit_1_and_say_why(doctor, monkeypatch):
    monkeypatch.setenv("STUDIO_LOAD_PLUGINS", "testgen,broken-import")
    monkeypatch.setenv("STUDIO_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("STUDIO_BROKER_URL", "redis://127.0.0.1:1/0")
    out = doctor("--json")
    assert out.exit_code == 1
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert not checks["database"]["ok"] and not checks["broker"]["ok"]
    assert not checks["plugin broken-import"]["ok"] and checks["plugin testgen"]["ok"]
    assert not checks["workers"]["ok"]  # unknown without the database


def test_no_live_worker_for_a_queue_fails(doctor, monkeypatch, engine):
    engine.db
    monkeypatch.setenv("STUDIO_BROKER_URL", "redis://127.0.0.1:1/0")
    checks = {c["name"]: c for c in json.loads(doctor("--json").stdout)}
    assert not checks["workers testgen"]["ok"] and "no live worker" in checks["workers testgen"]["detail"]


def test_weights_that_changed_fail(doctor, monkeypatch, tmp_path):
    from dataclasses import replace

    from studio.plugins import get_registry

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not the card's weights")
    registry = get_registry(("testgen",))
    monkeypatch.setitem(registry.models, "testgen",
                        replace(registry.models["testgen"], weights=str(weights), weights_sha256="0" * 64))
    out = doctor("--json")
    assert out.exit_code == 1
    check = {c["name"]: c for c in json.loads(out.stdout)}["model testgen"]
    assert not check["ok"] and "the file changed" in check["detail"]
