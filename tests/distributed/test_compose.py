"""docker-compose.yml cannot run here, so its structure is checked instead.

The processes it starts are the ones the other tests in this folder run for real:
``studio db upgrade``, ``studio worker --queues MODEL ...`` and ``studio queue ping``.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from studio.cli import add_plugin_commands, cli

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
BUNDLED_PLUGINS = ("galip", "clip-gen")


@pytest.fixture
def bundled_models() -> set[str]:  # per test: after the autouse fixture that gives it an empty home
    """Every model the bundled plugins register: a queue no worker serves keeps its jobs queued forever."""
    from studio.plugins import load_registry

    registry = load_registry(only=BUNDLED_PLUGINS)
    return {model for plugin in BUNDLED_PLUGINS for model in registry.plugins[plugin].models}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def studio_command(args: list[str]) -> click.Command:
    """Resolve and parse ``studio ARGS`` without running it; fails on unknown commands or options."""
    add_plugin_commands(cli)
    ctx = cli.make_context("studio", list(args), resilient_parsing=False)
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"`studio {' '.join(args)}`: no command {rest[0]!r}"
        command, rest = sub, rest[1:]
        ctx = command.make_context(command.name, list(rest), parent=ctx)
    return command


def workers(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("command", [None])[0] == "worker"}


def queues_of(service: dict) -> list[str]:
    command = service["command"]
    return command[command.index("--queues") + 1].split(",")


def is_gpu(service: dict) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_services_and_their_order(compose):
    services = compose["services"]
    assert {"redis", "postgres", "migrate"} <= set(services)
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, svc in workers(compose).items():
        conditions = {dep: spec["condition"] for dep, spec in svc["depends_on"].items()}
        assert conditions == {"redis": "service_healthy", "postgres": "service_healthy",
                              "migrate": "service_completed_successfully"}, name


def test_a_cpu_and_a_gpu_worker_per_model_queue(compose, bundled_models):
    assert {"galip", "clip-gen", "clip-gen-emoji"} <= bundled_models
    found = {(model, is_gpu(svc)) for svc in workers(compose).values() for model in queues_of(svc)}
    assert found == {(model, gpu) for model in bundled_models for gpu in (False, True)}
    for svc in workers(compose).values():
        device = svc["command"][svc["command"].index("--device") + 1]
        assert device.startswith("cuda") if is_gpu(svc) else device == "cpu"
        if is_gpu(svc):
            assert svc["image"] != compose["services"]["migrate"]["image"]  # the CUDA build of torch


def test_every_command_is_a_studio_command(compose):
    for name, svc in compose["services"].items():
        if "build" not in svc:
            continue  # redis, postgres: stock images
        studio_command(svc["command"])
        check = svc.get("healthcheck", {}).get("test", [])
        if check[1:2] == ["studio"]:
            studio_command(check[2:])
    assert "galip" in queues_of(compose["services"]["worker-galip-cpu"])


def test_unknown_commands_and_options_are_caught():
    with pytest.raises(AssertionError):
        studio_command(["wroker"])
    with pytest.raises(click.UsageError):
        studio_command(["worker", "--queue", "galip"])


def test_volumes_healthchecks_and_settings(compose):
    declared = set(compose["volumes"])
    assert {"images", "postgres", "redis"} <= declared
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            assert volume.split(":")[0] in declared, (name, volume)
        if name != "migrate":
            assert svc["healthcheck"]["test"], name
    for name, svc in workers(compose).items():
        assert "images:/data/images" in svc["volumes"], name
        assert any(v.startswith("inputs:/data/inputs") for v in svc["volumes"]), name  # conditioning images
        env = svc["environment"]
        assert env["STUDIO_HOME"] == "/data"
        assert env["STUDIO_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?") and "@redis:6379/" in env["STUDIO_BROKER_URL"]
        assert env["STUDIO_DATABASE_URL"].startswith("postgresql+psycopg://") and "@postgres:" in env["STUDIO_DATABASE_URL"]
        assert svc["stop_grace_period"]  # SIGTERM lets running jobs finish
    assert "redis-cli" in " ".join(compose["services"]["redis"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(compose["services"]["postgres"]["healthcheck"]["test"])


def test_the_image_builds_from_the_repository(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "torch==2.14.1" in dockerfile and 'ENTRYPOINT ["studio"]' in dockerfile
    for path in ("pyproject.toml", "studio", "migrations", "plugins/studio-galip", "plugins/studio-clip-gen"):
        assert (ROOT / path).exists()
        assert path.split("/")[0] in dockerfile
    for svc in compose["services"].values():
        if "build" in svc:
            assert svc["build"]["context"] == "."


def test_nothing_published_beyond_this_machine_and_no_credentials_committed(compose):
    import re
    import subprocess

    text = (ROOT / "docker-compose.yml").read_text()
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("${STUDIO_PUBLISH_ADDR:-127.0.0.1}:"), (name, port)
    assert "studio:studio@" not in text and "POSTGRES_PASSWORD: studio" not in text
    for variable in ("POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        assert f"${{{variable}:?" in text  # compose refuses to start without it
    example = (ROOT / ".env.example").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    assert used <= set(re.findall(r"^([A-Z_]+)=", example, re.M)), used
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode
    assert ignored == 0, ".env must be ignored by git"
