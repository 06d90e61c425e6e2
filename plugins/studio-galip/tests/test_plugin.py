"""The plugin surface: registered models, importing weights, and the click commands."""

from __future__ import annotations

import json
import sys
import types

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from galip_helpers import TINY_ARCH, make_tiny_clip, make_tiny_nets, save_clip, save_official_checkpoint

from studio.config import load_settings
from studio.generators import GenerationError, ModelSpec, Request
from studio_galip import model_dir, plugin
from studio_galip.checkpoints import save_studio
from studio_galip.generator import GalipGenerator


def registered() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    plugin.register_models(register=lambda spec: specs.setdefault(spec.id, spec))
    return specs


@pytest.fixture
def no_bundled(monkeypatch, tmp_path):
    monkeypatch.setattr(model_dir, "BUNDLED_CARD", tmp_path / "absent.json")
    monkeypatch.setattr(model_dir, "BUNDLED_WEIGHTS", tmp_path / "absent.safetensors")


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
    assert [p.name for p in spec.params] == ["image", "image_strength", "interp_to", "interp_seed_to", "interp_t",
                                            "cpu_kernels"]
    assert spec.validate_params({})["interp_seed_to"] == -1
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
    monkeypatch.setattr(model_dir, "BUNDLED_CARD", folder / "galip-shapes.json")
    monkeypatch.setattr(model_dir, "BUNDLED_WEIGHTS", folder / "galip-shapes.safetensors")
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
    card = model_dir.import_model("tiny", ckpt, clip_file, TINY_ARCH, load_settings().models_dir)
    assert card.id == "galip/tiny"
    data = json.loads((card.folder / "model.json").read_text())
    assert data["clip"]["arch"] == TINY_ARCH and len(data["clip"]["sha256"]) == 64
    assert data["source"]["format"] == "official" and "CC BY-NC-SA 4.0" in data["terms"]
    assert data["trunk"] == "clip file"
    spec = registered()["galip/tiny"]
    gen = spec.factory()
    gen.load("cpu")
    requests = [Request("a red circle", 1), Request("a blue square", 2)]
    ours = gen.generate(requests, lambda d, t: None)
    ref = GalipGenerator.from_nets(nets)
    ref.load("cpu")
    for a, b in zip(ours, ref.generate(requests, lambda d, t: None)):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    with pytest.raises(model_dir.ModelImportError, match="already exists"):
        model_dir.import_model("tiny", ckpt, clip_file, TINY_ARCH, load_settings().models_dir)


def test_a_model_imported_before_ids_were_unified_keeps_its_id(no_bundled, official_files):
    """Cards without a recorded id are ``galip-NAME`` (the id their images name); a forced
    re-import keeps the id of the model it replaces, a fresh one is ``galip/NAME``."""
    nets, ckpt, clip_file = official_files
    models = load_settings().models_dir
    card = model_dir.import_model("old", ckpt, clip_file, TINY_ARCH, models)
    data = json.loads((card.folder / "model.json").read_text())
    del data["id"]  # as written before
    (card.folder / "model.json").write_text(json.dumps(data))
    assert "galip-old" in registered() and "galip/old" not in registered()
    again = model_dir.import_model("old", ckpt, clip_file, TINY_ARCH, models, force=True)
    assert again.id == "galip-old" and "galip-old" in registered()
    assert again.data["weights_sha256"] == card.data["weights_sha256"]
    assert model_dir.import_model("new", ckpt, clip_file, TINY_ARCH, models).id == "galip/new"
    assert {"galip-old", "galip/new"} <= set(registered())


def test_import_keeps_a_trunk_that_differs_from_the_clip_file(no_bundled, tmp_path, official_files):
    nets, ckpt, _ = official_files
    other_clip = save_clip(tmp_path / "other_clip.pt", make_tiny_clip(seed=8))  # another trunk
    card = model_dir.import_model("mixed", ckpt, other_clip, TINY_ARCH, load_settings().models_dir)
    assert card.data["trunk"].startswith("included")


def test_broken_cards_are_skipped(no_bundled):
    folder = load_settings().models_dir / "galip" / "broken"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text("{not json")
    assert "galip/broken" not in registered()


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
    # `studio galip train` is the one shown; `studio train galip` still works for older scripts
    assert "train" in runner.invoke(cli, ["galip", "--help"]).output
    assert "galip" not in runner.invoke(cli, ["train", "--help"]).output
    assert "--dataset" in runner.invoke(cli, ["train", "galip", "--help"]).output

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
    assert "galip/coco" in result.output and "CC BY-NC-SA" in result.output


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


@pytest.fixture
def fresh_process(monkeypatch):
    """A plugin registry and generator cache of their own, as in a new `studio` process."""
    from studio import engine as engine_module
    from studio import plugins as plugins_module
    from studio.loader import GeneratorCache

    monkeypatch.setattr(plugins_module, "_cached", {})
    monkeypatch.setattr(engine_module, "generators", GeneratorCache())


def test_train_and_interpolate_commands(no_bundled, fresh_process, tmp_path, monkeypatch, official_files):
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
    # the finished run folder imports as it is: its model card names the CLIP file and architecture
    result = CliRunner().invoke(cli, ["models", "import", "galip", "same", str(out)])
    assert result.exit_code == 0, result.output
    card = json.loads((load_settings().models_dir / "galip" / "same" / "model.json").read_text())
    assert card["clip"]["arch"] == TINY_ARCH and card["clip"]["file"] == str(clip_file.absolute())
    frames = tmp_path / "frames"
    result = CliRunner().invoke(cli, ["galip", "interpolate", "a red square", "a blue square", "-m", "galip/mine",
                                      "--frames", "3", "--out", str(frames)])
    assert result.exit_code == 0, result.output
    assert len(list(frames.glob("frame_*.png"))) == 4 and (frames / "strip.png").is_file()
    result = CliRunner().invoke(cli, ["galip", "interpolate", "a", "b", "-m", "nope", "--out", str(frames)])
    assert result.exit_code == 1 and "no GALIP model 'nope'" in result.output


def stored_pixels(engine, job_id: str) -> np.ndarray:
    from PIL import Image

    image = engine.images(job_id)[0]
    with Image.open(engine.settings.home / image.path) as img:
        return np.asarray(img.convert("RGB"))


def test_interpolation_frames_are_stored_reproducible_jobs(no_bundled, fresh_process, tmp_path, official_files):
    from PIL import Image

    from studio.engine import Engine
    from studio.gallery import actions
    from studio.store import read_recipe

    _, ckpt, clip_file = official_files
    model_dir.import_model("tiny", ckpt, clip_file, TINY_ARCH, load_settings().models_dir)
    out = tmp_path / "frames"
    result = CliRunner().invoke(make_cli(), ["galip", "interpolate", "a red square", "a blue square", "-m",
                                             "galip/tiny", "--seed", "3", "--seed", "8", "--frames", "3",
                                             "--out", str(out)])
    assert result.exit_code == 0, result.output
    engine = Engine(load_settings())
    jobs = sorted(engine.list_jobs(limit=10), key=lambda j: j.id)
    assert len(jobs) == 4 and all(j.status == "succeeded" and j.model_id == "galip/tiny" for j in jobs)
    assert all(j.id in result.output for j in jobs)
    assert [j.params["interp_t"] for j in jobs] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert {(j.prompt, j.seed, j.params["interp_to"], j.params["interp_seed_to"]) for j in jobs} == {
        ("a red square", 3, "a blue square", 8)}

    # --out holds the stored PNGs themselves (recipes included) and the strip.
    for i, job in enumerate(jobs):
        image = engine.images(job.id)[0]
        assert (out / f"frame_{i:04d}.png").read_bytes() == (engine.settings.home / image.path).read_bytes()
        assert read_recipe(out / f"frame_{i:04d}.png")["params"]["interp_t"] == job.params["interp_t"]
    with Image.open(out / "strip.png") as strip:
        assert strip.size == (4 * image.width, image.height)

    # A stored frame's recipe makes the same image again through the ordinary job path.
    middle = engine.images(jobs[1].id)[0]
    again = engine.run(actions.regenerate(engine, actions.source(engine, middle.id)).id)
    assert again.status == "succeeded" and engine.images(again.id)[0].sha256 == middle.sha256

    # The ends are plain images of the key prompts and seeds; the frames between are new.
    first = engine.run(engine.submit("a red square", "galip/tiny", seed=3).id)
    last = engine.run(engine.submit("a blue square", "galip/tiny", seed=8).id)
    assert np.array_equal(stored_pixels(engine, jobs[0].id), stored_pixels(engine, first.id))
    assert np.array_equal(stored_pixels(engine, jobs[-1].id), stored_pixels(engine, last.id))
    for job in jobs[1:3]:
        assert not np.array_equal(stored_pixels(engine, job.id), stored_pixels(engine, first.id))
        assert not np.array_equal(stored_pixels(engine, job.id), stored_pixels(engine, last.id))


def test_interpolate_without_out_only_stores(no_bundled, fresh_process, tmp_path, official_files, monkeypatch):
    from studio.engine import Engine

    _, ckpt, clip_file = official_files
    model_dir.import_model("tiny", ckpt, clip_file, TINY_ARCH, load_settings().models_dir)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(make_cli(), ["galip", "interpolate", "a red square", "-m", "galip/tiny",
                                             "--what", "noise", "--frames", "2"])
    assert result.exit_code == 0, result.output
    jobs = sorted(Engine(load_settings()).list_jobs(limit=10), key=lambda j: j.id)
    assert [(j.seed, j.params["interp_seed_to"], j.params["interp_to"]) for j in jobs] == [(0, 1, "")] * 3
    assert not list(tmp_path.glob("*.png"))

    bad = CliRunner().invoke(make_cli(), ["galip", "interpolate", "a", "   ", "-m", "galip/tiny"])
    assert bad.exit_code == 1 and "the prompt is empty" in bad.output and bad.output.count("\n") == 1
    bad = CliRunner().invoke(make_cli(), ["galip", "interpolate", "a", "--seed", "4", "-m", "galip/tiny"])
    assert bad.exit_code == 1 and "at least two prompts or two seeds" in bad.output
    assert len(Engine(load_settings()).list_jobs(limit=10)) == 3  # nothing stored by a refused walk


def test_plugin_import_does_not_import_torch():
    import subprocess

    code = "import sys, studio_galip.plugin, studio_galip.commands; print('torch' in sys.modules)"
    env_path = str(__import__("pathlib").Path(plugin.__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": env_path})
    assert out.stdout.strip() == "False", out.stderr


def test_changed_weights_are_detected(no_bundled, official_files):
    _, ckpt, clip_file = official_files
    card = model_dir.import_model("tiny", ckpt, clip_file, TINY_ARCH, load_settings().models_dir)
    with open(card.weights, "r+b") as fh:  # flip bytes inside a tensor: still a valid file
        fh.seek(-8, 2)
        fh.write(b"\x01\x02\x03\x04\x05\x06\x07\x08")
    gen = registered()["galip/tiny"].factory()
    with pytest.raises(GenerationError, match="changed since it was installed"):
        gen.load("cpu")


def test_card_clip_file_may_live_in_another_package(tmp_path):
    import studio_galip

    card = model_dir.ModelCard("x", tmp_path, {"clip": {"arch": "a", "package": "studio_galip", "file": "plugin.py"}})
    assert card.clip_file == model_dir.Path(studio_galip.__file__).parent / "plugin.py"
    card = model_dir.ModelCard("x", tmp_path, {"clip": {"arch": "a", "file": "clip.pt"}})
    assert card.clip_file == tmp_path / "clip.pt"


def test_training_on_shapes_writes_an_eval_into_the_card(no_bundled, tmp_path, official_files):
    _, _, clip_file = official_files
    out = tmp_path / "run"
    result = CliRunner().invoke(make_cli(), ["galip", "train", "--dataset", "shapes", "--clip", str(clip_file),
                                             "--clip-arch", TINY_ARCH, "--out", str(out), "--steps", "2",
                                             "--batch-size", "4", "--ngf", "8", "--eval-n", "6"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "model_card.json").read_text())
    assert card["eval"]["n"] == 6 and card["eval"]["judge_clip"] == str(clip_file)
    for metric in ("colour", "shape", "clip_score"):
        assert 0 <= card["eval"][metric]["value"] <= 1 or metric == "clip_score"
    assert card["eval"]["colour"]["n"] == 6


def test_train_defaults_to_the_bundled_clip(monkeypatch, tmp_path):
    from studio.ml import BUNDLED_CLIP_FILE
    from studio_galip import commands, train

    seen = {}

    def fake_train(out_dir, dataset, clip, **kwargs):
        seen.update(kwargs["meta"], aux_weight=kwargs["aux_weight"], pixel_weight=kwargs["pixel_weight"])
        return {"steps": 1}

    monkeypatch.setattr(train, "train_galip", fake_train)
    result = CliRunner().invoke(make_cli(), ["galip", "train", "--out", str(tmp_path / "run"), "--steps", "1",
                                             "--eval-n", "0"])
    assert result.exit_code == 0, result.output
    assert seen["clip_arch"] == "studio-bundled" and seen["clip_file"] == str(BUNDLED_CLIP_FILE)
    assert "{" not in result.output and f"studio models import galip NAME {tmp_path / 'run'}" in result.output
    result = CliRunner().invoke(make_cli(), ["galip", "train", "--out", str(tmp_path / "run"), "--steps", "1",
                                             "--eval-n", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"steps": 1, "weights": str(tmp_path / "run" / "galip.safetensors")}
    result = CliRunner().invoke(make_cli(), ["galip", "train", "--out", str(tmp_path / "run"), "--steps", "1",
                                             "--clip-arch", "ViT-B-32"])
    assert result.exit_code == 2 and "needs --clip FILE" in result.output
    assert commands.default_clip(None, None) == (BUNDLED_CLIP_FILE, "studio-bundled")
    result = CliRunner().invoke(make_cli(), ["galip", "train", "--out", str(tmp_path / "run"), "--steps", "1",
                                             "--aux", "1.0"])
    assert result.exit_code == 2 and "--aux needs --pixel-d" in result.output
    result = CliRunner().invoke(make_cli(), ["galip", "train", "--out", str(tmp_path / "run"), "--steps", "1",
                                             "--eval-n", "0", "--pixel-d", "1", "--aux", "2"])
    assert result.exit_code == 0, result.output
    assert seen["aux_weight"] == 2.0 and seen["pixel_weight"] == 1.0


def test_a_run_on_the_bundled_clip_imports_as_it_is(no_bundled, tmp_path):
    """A run folder made with the default CLIP: `studio models import galip NAME RUN` needs nothing else,
    and the card names the CLIP by package, as the bundled model does."""
    import shutil

    from studio.ml import BUNDLED_CLIP_FILE

    bundled = model_dir.BUNDLED_DIR / "galip-shapes.safetensors"
    if not bundled.is_file() or not BUNDLED_CLIP_FILE.is_file():
        pytest.skip("bundled weights not installed")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(bundled, run / "galip.safetensors")
    (run / "model_card.json").write_text(json.dumps({"clip_arch": "studio-bundled", "clip_file": str(BUNDLED_CLIP_FILE)}))
    result = CliRunner().invoke(make_cli(), ["models", "import", "galip", "pets", str(run)])
    assert result.exit_code == 0, result.output
    card = json.loads((load_settings().models_dir / "galip" / "pets" / "model.json").read_text())
    assert card["clip"]["package"] == "studio.ml" and card["clip"]["arch"] == "studio-bundled"
    assert card["clip"]["file"] == "weights/clip-small.safetensors"
    assert "galip/pets" in registered()

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(make_cli(), ["models", "import", "galip", "x", str(empty)])
    assert result.exit_code == 1 and "no galip.safetensors" in result.output
    result = CliRunner().invoke(make_cli(), ["models", "import", "galip", "x"])
    assert result.exit_code == 1 and "run folder or --checkpoint" in result.output


def test_fast_kernels_stay_within_a_level_and_old_recipes_keep_the_exact_ones(
        no_bundled, fresh_process, official_files, monkeypatch):
    """With every 3x3 layer made eligible for Winograd (the tiny model has none of the size that
    gains), the fast kernels change floats but no pixel by more than one level; a job at the exact
    setting stores no `cpu_kernels` (as recipes made before the parameter), and regenerates so."""
    from studio.engine import Engine
    from studio.gallery import actions
    from studio_galip import kernels

    if not kernels.nnpack_available():
        pytest.skip("this PyTorch has no NNPACK")
    monkeypatch.setattr(kernels, "MIN_FLOPS", 0)
    _, ckpt, clip_file = official_files
    model_dir.import_model("tiny", ckpt, clip_file, TINY_ARCH, load_settings().models_dir)
    gen = registered()["galip/tiny"].factory()
    gen.load("cpu")
    noise, cond = gen.noise([Request("a red square", 3)]), gen.conditions([Request("a red square", 3)])
    exact, ran_exact = gen.render(noise, cond)
    fast, ran_fast = gen.render(noise, cond, fast=True)
    again, _ = gen.render(noise, cond, fast=True)
    assert ran_exact and ran_fast
    assert not torch_equal(exact, fast) and torch_equal(fast, again)
    assert float((exact - fast).abs().max()) < 1e-3
    assert torch_equal(gen.render(noise, cond)[0], exact)  # exact again after fast

    # the choice is per thread: an exact render beside a fast one in another thread keeps its kernels
    import threading

    inside, done, seen = threading.Event(), threading.Event(), {}

    def fast_in_a_thread():
        with kernels.fast_kernels(gen.nets.G, max_side=gen.nets.cfg.image_size):
            inside.set()
            done.wait(30)
            import torch

            with torch.no_grad():
                seen["fast"] = gen.nets.G(noise, cond)

    worker = threading.Thread(target=fast_in_a_thread)
    worker.start()
    assert inside.wait(30)
    beside, _ = gen.render(noise, cond)
    done.set()
    worker.join(30)
    assert torch_equal(beside, exact) and torch_equal(seen["fast"], fast)

    engine = Engine(load_settings())
    default = engine.run(engine.submit("a red square", "galip/tiny", seed=3).id)
    exact_job = engine.run(engine.submit("a red square", "galip/tiny", seed=3, params={"cpu_kernels": "exact"}).id)
    assert default.params["cpu_kernels"] == "fast" and "cpu_kernels" not in exact_job.params
    diff = np.abs(stored_pixels(engine, default.id).astype(int) - stored_pixels(engine, exact_job.id).astype(int))
    assert diff.max() <= 1
    child = engine.run(actions.regenerate(engine, actions.source(engine, exact_job.id)).id)
    assert child.params == exact_job.params
    assert engine.images(child.id)[0].sha256 == engine.images(exact_job.id)[0].sha256
    # the family tree names the value a recipe means by leaving the parameter out
    from studio.gallery.lineage import lineage, unset_values_of

    exact_child = engine.run(actions.regenerate(engine, actions.source(engine, default.id),
                                                params={"cpu_kernels": "exact"}).id)
    family = lineage(engine.db, exact_child.id, unset_values_of(engine.registry))
    assert family.root.children[0].changes_from(family.root) == ["cpu_kernels=exact"]
    # ... but lists it apart from what the job stored (its recipe leaves the parameter out)
    child_node = family.root.children[0].as_dict()
    assert "cpu_kernels" not in child_node["params"] and child_node["implied_params"]["cpu_kernels"] == "exact"
    assert family.root.as_dict()["params"]["cpu_kernels"] == "fast" and "cpu_kernels" not in family.root.implied


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_without_nnpack_the_recipe_says_only_the_fusion_ran(no_bundled, official_files, monkeypatch):
    from studio_galip import kernels

    monkeypatch.setattr(kernels, "MIN_FLOPS", 0)
    monkeypatch.setattr(kernels, "nnpack_available", lambda: False)
    _, ckpt, clip_file = official_files
    model_dir.import_model("tiny", ckpt, clip_file, TINY_ARCH, load_settings().models_dir)
    gen = registered()["galip/tiny"].factory()
    gen.load("cpu")
    fast = gen.generate([Request("a red square", 3, {"cpu_kernels": "fast"})], lambda d, t: None)[0]
    exact = gen.generate([Request("a red square", 3, {})], lambda d, t: None)[0]
    assert fast.extra["cpu_kernels_ran"].startswith("fused only") and "cpu_kernels_ran" not in exact.extra
    diff = np.abs(np.asarray(fast.image).astype(int) - np.asarray(exact.image).astype(int))
    assert diff.max() <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_training_device_this_machine_lacks_is_one_line_before_anything_loads(tmp_path):
    result = CliRunner().invoke(make_cli(), ["galip", "train", "--out", str(tmp_path / "run"), "--steps", "1",
                                             "--device", "cuda:3"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --device cuda:3: this machine has no usable CUDA device (torch.cuda.is_available() is False); use cpu"]
    assert not (tmp_path / "run").exists()
