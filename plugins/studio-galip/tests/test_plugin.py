"""The plugin surface: registered models, importing weights, and the click commands."""

from __future__ import annotations

import json
import sys
import types

import click
import numpy as np
import pytest
from click.testing import CliRunner
from galip_helpers import TINY_ARCH, make_tiny_clip, make_tiny_nets, save_clip, save_official_checkpoint

from studio.config import load_settings
from studio.generators import GenerationError, ModelSpec, Request
from studio_galip import installed, plugin
from studio_galip.checkpoint import save_studio
from studio_galip.generator import GalipGenerator


def registered() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    plugin.register_models(register=lambda spec: specs.setdefault(spec.id, spec))
    return specs


@pytest.fixture
def no_bundled(monkeypatch, tmp_path):
    monkeypatch.setattr(installed, "BUNDLED_CARD", tmp_path / "absent.json")
    monkeypatch.setattr(installed, "BUNDLED_WEIGHTS", tmp_path / "absent.safetensors")


@pytest.fixture
def official_files(tmp_path):
    """An official-layout checkpoint (fp16 trunk, module. prefixes) and the CLIP file it goes with."""
    clip = make_tiny_clip()
    nets = make_tiny_nets(clip, seed=5)
    ckpt = tmp_path / "pre_tiny.pth"
    save_official_checkpoint(ckpt, nets, half_trunk=False)
    return nets, ckpt, save_clip(tmp_path / "clip.pt", clip)


def test_bundled_model_is_registered_even_when_missing(no_bundled):
    spec = registered()["galip"]
    assert "not installed" in spec.weights
    assert [p.name for p in spec.params] == ["image", "image_strength"]
    with pytest.raises(GenerationError, match="the bundled galip weights are not installed"):
        spec.factory()


def test_bundled_model_loads_when_present(monkeypatch, tmp_path):
    clip = make_tiny_clip()
    nets = make_tiny_nets(clip, seed=2)
    folder = tmp_path / "weights"
    folder.mkdir()
    save_studio(folder / "galip-shapes.safetensors", nets)
    save_clip(folder / "clip.pt", clip)
    (folder / "galip-shapes.json").write_text(json.dumps({"clip": {"arch": TINY_ARCH, "file": "clip.pt"}}))
    monkeypatch.setattr(installed, "BUNDLED_CARD", folder / "galip-shapes.json")
    monkeypatch.setattr(installed, "BUNDLED_WEIGHTS", folder / "galip-shapes.safetensors")
    gen = registered()["galip"].factory()
    gen.load("cpu")
    result = gen.generate([Request("a red circle", 1)], lambda d, t: None)[0]
    ref = GalipGenerator.from_nets(nets)
    ref.load("cpu")
    expected = ref.generate([Request("a red circle", 1)], lambda d, t: None)[0]
    assert np.array_equal(np.asarray(result.image), np.asarray(expected.image))
    assert len(gen.describe()["weights_sha256"]) == 64


def test_import_then_generate_gives_the_source_pixels(no_bundled, official_files):
    nets, ckpt, clip_file = official_files
    card = installed.import_model("tiny", ckpt, clip_file, TINY_ARCH, load_settings().models_dir)
    assert card.id == "galip-tiny"
    data = json.loads((card.folder / "model.json").read_text())
    assert data["clip"]["arch"] == TINY_ARCH and len(data["clip"]["sha256"]) == 64
    assert data["source"]["format"] == "official" and "CC BY-NC-SA 4.0" in data["terms"]
    assert data["trunk"] == "clip file"
    spec = registered()["galip-tiny"]
    gen = spec.factory()
    gen.load("cpu")
    requests = [Request("a red circle", 1), Request("a blue square", 2)]
    ours = gen.generate(requests, lambda d, t: None)
    ref = GalipGenerator.from_nets(nets)
    ref.load("cpu")
    for a, b in zip(ours, ref.generate(requests, lambda d, t: None)):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    with pytest.raises(installed.ModelImportError, match="already exists"):
        installed.import_model("tiny", ckpt, clip_file, TINY_ARCH, load_settings().models_dir)


def test_import_keeps_a_trunk_that_differs_from_the_clip_file(no_bundled, tmp_path, official_files):
    nets, ckpt, _ = official_files
    other_clip = save_clip(tmp_path / "other_clip.pt", make_tiny_clip(seed=8))  # another trunk
    card = installed.import_model("mixed", ckpt, other_clip, TINY_ARCH, load_settings().models_dir)
    assert card.data["trunk"].startswith("included")


def test_broken_cards_are_skipped(no_bundled):
    folder = load_settings().models_dir / "galip" / "broken"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text("{not json")
    assert "galip-broken" not in registered()


def make_cli() -> click.Group:
    """A stand-in for the core CLI: a `models` group with an `import` group, and `train`."""

    @click.group()
    def cli():
        pass

    @cli.group()
    def models():
        pass

    @models.group(name="import")
    def models_import():
        pass

    @cli.group()
    def train():
        pass

    plugin.register_commands(cli)
    return cli


def test_commands_are_added_where_the_core_expects_them():
    cli = make_cli()
    runner = CliRunner()
    assert "interpolate" in runner.invoke(cli, ["galip", "--help"]).output
    assert "galip" in runner.invoke(cli, ["models", "import", "--help"]).output
    assert "galip" in runner.invoke(cli, ["train", "--help"]).output

    @click.group()
    def bare():
        pass

    plugin.register_commands(bare)
    assert "import" in CliRunner().invoke(bare, ["galip", "--help"]).output


def test_import_command_shows_the_terms(no_bundled, official_files):
    _, ckpt, clip_file = official_files
    result = CliRunner().invoke(make_cli(), ["models", "import", "galip", "coco", "--checkpoint", str(ckpt),
                                             "--clip", str(clip_file), "--clip-arch", TINY_ARCH])
    assert result.exit_code == 0, result.output
    assert "galip-coco" in result.output and "CC BY-NC-SA" in result.output


def test_import_command_bad_input_is_one_line(no_bundled, tmp_path, official_files):
    _, _, clip_file = official_files
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    result = CliRunner().invoke(make_cli(), ["models", "import", "galip", "x", "--checkpoint", str(junk),
                                             "--clip", str(clip_file), "--clip-arch", TINY_ARCH])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "junk.pth" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(make_cli(), ["models", "import", "galip", "Bad Name", "--checkpoint", str(junk),
                                             "--clip", str(clip_file)])
    assert result.exit_code == 1 and "model name" in result.output


def test_train_and_interpolate_commands(no_bundled, tmp_path, monkeypatch, official_files):
    from test_train import ToyColours

    fake = types.ModuleType("studio.ml.datasets")
    fake.open_dataset = lambda name, **options: ToyColours()
    monkeypatch.setitem(sys.modules, "studio.ml.datasets", fake)
    _, ckpt, clip_file = official_files
    cli = make_cli()
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["galip", "train", "--dataset", "toy", "--clip", str(clip_file), "--clip-arch",
                                      TINY_ARCH, "--out", str(out), "--steps", "2", "--batch-size", "4", "--ngf", "8"])
    assert result.exit_code == 0, result.output
    assert (out / "galip.safetensors").is_file() and (out / "checkpoint.pt").is_file()

    result = CliRunner().invoke(cli, ["models", "import", "galip", "mine", "--checkpoint", str(out / "galip.safetensors"),
                                      "--clip", str(clip_file), "--clip-arch", TINY_ARCH])
    assert result.exit_code == 0, result.output
    frames = tmp_path / "frames"
    result = CliRunner().invoke(cli, ["galip", "interpolate", "a red square", "a blue square", "-m", "galip-mine",
                                      "--frames", "3", "--out", str(frames)])
    assert result.exit_code == 0, result.output
    assert len(list(frames.glob("frame_*.png"))) == 4 and (frames / "strip.png").is_file()
    result = CliRunner().invoke(cli, ["galip", "interpolate", "a", "b", "-m", "nope", "--out", str(frames)])
    assert result.exit_code == 1 and "no GALIP model 'nope'" in result.output


def test_plugin_import_does_not_import_torch():
    import subprocess

    code = "import sys, studio_galip.plugin, studio_galip.commands; print('torch' in sys.modules)"
    env_path = str(__import__("pathlib").Path(plugin.__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": env_path})
    assert out.stdout.strip() == "False", out.stderr


def test_changed_weights_are_detected(no_bundled, official_files):
    _, ckpt, clip_file = official_files
    card = installed.import_model("tiny", ckpt, clip_file, TINY_ARCH, load_settings().models_dir)
    with open(card.weights, "r+b") as fh:  # flip bytes inside a tensor: still a valid file
        fh.seek(-8, 2)
        fh.write(b"\x01\x02\x03\x04\x05\x06\x07\x08")
    gen = registered()["galip-tiny"].factory()
    with pytest.raises(GenerationError, match="changed since it was installed"):
        gen.load("cpu")


def test_card_clip_file_may_live_in_another_package(tmp_path):
    import studio_galip

    card = installed.ModelCard("x", tmp_path, {"clip": {"arch": "a", "package": "studio_galip", "file": "plugin.py"}})
    assert card.clip_file == installed.Path(studio_galip.__file__).parent / "plugin.py"
    card = installed.ModelCard("x", tmp_path, {"clip": {"arch": "a", "file": "clip.pt"}})
    assert card.clip_file == tmp_path / "clip.pt"
