"""The plugin through Studio itself: hooks, the import command and a job, via the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.generators import GenerationError
from studio_clip_gen import plugin

STUDIO = [sys.executable, "-m", "studio"]


def _registered(monkeypatch, bundled_dir=None):
    if bundled_dir is not None:
        monkeypatch.setattr(plugin, "BUNDLED_DIR", bundled_dir)
    specs = []
    plugin.register_models(specs.append)
    return {s.id: s for s in specs}


def test_bundled_model_is_registered_even_without_weights(monkeypatch, tmp_path):
    specs = _registered(monkeypatch, tmp_path / "weights")
    spec = specs["clip-gen"]
    assert spec.weights == "bundled weights not installed"
    assert {p.name for p in spec.params} == {"temperature", "top_k", "top_p", "candidates", "keep", "image", "guidance", "skip_blank"}
    with pytest.raises(GenerationError, match="bundled clip-gen weights are not installed"):
        spec.factory()


def test_imported_models_are_registered(monkeypatch, studio_home, model_folder):
    import shutil

    shutil.copytree(model_folder, studio_home / "models" / "clip-gen" / "mine")
    (studio_home / "models" / "clip-gen" / "empty").mkdir()
    specs = _registered(monkeypatch)
    assert "clip-gen/mine" in specs and "clip-gen/empty" not in specs
    generator = specs["clip-gen/mine"].factory()
    generator.load("cpu")
    assert generator.describe()["model"] == "clip-gen/mine"


def test_a_model_folder_shipped_as_weights_name_is_a_bundled_model_of_its_own(monkeypatch, tmp_path, model_folder):
    """weights-emoji/ beside weights/ registers as clip-gen-emoji, with its own card and factory."""
    import shutil

    shutil.copytree(model_folder, tmp_path / "weights-emoji")
    (tmp_path / "weights-emoji" / "model_card.json").write_text(json.dumps({"dataset": "emoji", "draws": "emoji",
                                                                           "vocabulary": ["cat", "face"]}))
    (tmp_path / "weights-empty").mkdir()  # no model.json: not a model
    shutil.copytree(model_folder, tmp_path / "weights-bad name")  # not a usable model id
    monkeypatch.setattr(plugin, "PACKAGE_DIR", tmp_path)
    specs = _registered(monkeypatch)
    extra = {k for k in specs if k.startswith("clip-gen-")}
    assert extra == {"clip-gen-emoji"}
    spec = specs["clip-gen-emoji"]
    assert spec.weights == "bundled (studio_clip_gen/weights-emoji)" and spec.description.endswith("draws emoji")
    assert spec.unknown_words("cat face") == [] and spec.unknown_words("a red square") == ["a", "red", "square"]
    generator = spec.factory()
    generator.load("cpu")
    assert generator.describe()["model"] == "clip-gen-emoji"


def _studio(*args, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIO_HOME": str(home), "STUDIO_LOAD_PLUGINS": "clip-gen", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*STUDIO, *args], env=env, capture_output=True, text=True, timeout=300)


def test_import_command_and_a_job_end_to_end(studio_home, parts, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    common = ["--transformer", str(parts / "transformer.safetensors"), "--clip", str(parts / "clip.safetensors"),
              "--clip-arch", "studio-tiny-64"]
    failed = _studio("models", "import", "clip-gen", "tiny", "--vqgan", str(bad), *common, home=studio_home)
    assert failed.returncode != 0
    assert "bad.ckpt" in failed.stderr and "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1

    done = _studio("models", "import", "clip-gen", "tiny", "--vqgan", str(parts / "vqgan.safetensors"), *common,
                   home=studio_home)
    assert done.returncode == 0, done.stderr
    assert "imported clip-gen/tiny" in done.stdout
    assert (studio_home / "models" / "clip-gen" / "tiny" / "model.json").is_file()

    job = _studio("submit", "a red square", "-m", "clip-gen/tiny", "-s", "3", "-n", "2", "-p", "candidates=2",
                  "--json", home=studio_home)
    assert job.returncode == 0, job.stderr
    info = json.loads(job.stdout)
    assert info["status"] == "succeeded", info
    assert len(list((studio_home / "images").rglob("*.png"))) == 2


def test_package_writes_a_model_card_measured_on_the_packaged_files(parts, tmp_path):
    from click.testing import CliRunner

    from studio_clip_gen.card import CARD_JSON
    from studio_clip_gen.commands import clip_gen_group

    out = tmp_path / "model"
    result = CliRunner().invoke(clip_gen_group, [
        "package", str(out), "--vqgan", str(parts / "vqgan.safetensors"), "--transformer",
        str(parts / "transformer.safetensors"), "--clip", str(parts / "clip.safetensors"), "--clip-arch",
        "studio-tiny-64", "--eval-n", "4", "--candidates", "2"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / CARD_JSON).read_text())
    assert set(card["eval"]) == {"candidates=1", "candidates=2"}
    for scores in card["eval"].values():
        assert scores["n"] == 4 and 0 <= scores["colour"] <= 1 and -1 <= scores["clip_score"] <= 1
    assert card["vqgan"]["codes"] == 16 and 1 <= card["vqgan"]["codes_used"] <= 16
    assert card["vqgan"]["psnr_db"] > 0
    # what `studio submit` warns about and `studio models` shows comes from the card, not by hand
    from studio.ml import shapes

    assert card["dataset"] == "shapes" and card["vocabulary"] == shapes.vocabulary() and card["draws"] == "coloured shapes"
    spec = _registered_folder(out)
    assert spec.unknown_words("a red cat above a blue square") == ["cat"]
    # the folder names its sources by file name only, never by where they were built
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["source"] == {"vqgan": "vqgan.safetensors", "transformer": "transformer.safetensors",
                                  "clip": "clip.safetensors"}


def test_package_sets_sampling_defaults_that_the_model_then_uses(parts, tmp_path):
    from click.testing import CliRunner

    from studio_clip_gen.card import CARD_JSON
    from studio_clip_gen.commands import clip_gen_group

    def package(out, *extra):
        return CliRunner().invoke(clip_gen_group, [
            "package", str(out), "--vqgan", str(parts / "vqgan.safetensors"), "--transformer",
            str(parts / "transformer.safetensors"), "--clip", str(parts / "clip.safetensors"), "--clip-arch",
            "studio-tiny-64", *extra])

    for bad, message in ((["--default", "candidates=2"], "must be one of temperature, top_k, top_p, not 'candidates'"),
                         (["--default", "top_k"], "--default takes KEY=VALUE, got 'top_k'"),
                         (["--default", "temperature=0"], "parameter 'temperature' must be >= 0.05"),
                         (["--default", "guidance=2"], "set with --guidance G, not --default"),
                         (["--default", "top_k=5"], "given twice: top_k"),
                         ([], "give --eval-n too")):
        result = package(tmp_path / "refused", *(["--eval-n", "2"] if bad else []), "--default", "top_k=3", *bad)
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "refused").exists()  # refused before anything is written
    out = tmp_path / "model"
    result = package(out, "--eval-n", "2", "--candidates", "1", "--default", "top_k=3", "--default", "temperature=0.7")
    assert result.exit_code == 0, result.output
    card = json.loads((out / CARD_JSON).read_text())
    assert card["defaults"]["top_k"] == 3 and card["defaults"]["temperature"] == 0.7
    defaults = {p.name: p.default for p in _registered_folder(out).params}
    assert (defaults["top_k"], defaults["temperature"], defaults["top_p"]) == (3, 0.7, 1.0)


def _registered_folder(folder: Path):
    """The ModelSpec a model folder registers with (as an imported model would)."""
    card = plugin.read_card(folder)
    return plugin.ModelSpec(id="clip-gen/x", plugin="clip-gen", factory=lambda: None,
                            params=plugin.params_for(folder, card), **plugin.card_details(card))


def test_an_emoji_models_card_is_measured_on_emoji_and_names_its_artwork(parts, tmp_path):
    """--dataset emoji: concept accuracy on held-out phrasings (the model's own CLIP matches the
    pictures), the VQGAN on emoji pictures, the captions' words as vocabulary, the attribution."""
    from studio.api import prompt_words
    from studio.ml import emoji
    from studio_clip_gen.card import write_card
    from studio_clip_gen.model_dir import assemble

    pytest.importorskip("resvg_py")
    data = emoji.build(size=16, styles=["twemoji"], cache_dir=tmp_path / "cache", limit=24, workers=1)
    out = tmp_path / "emoji-model"
    assemble(out, vqgan=parts / "vqgan.safetensors", transformer=parts / "transformer.safetensors",
             clip=parts / "clip.safetensors", clip_arch="studio-tiny-64")
    card = write_card(out, eval_n=4, candidates=2, sources={}, dataset="emoji", data=data)
    assert card == json.loads((out / "model_card.json").read_text())
    assert card["dataset"] == "emoji" and set(card["eval"]) == {"candidates=1", "candidates=2"}
    for scores in card["eval"].values():
        assert scores["n"] == 4 and {"clip_top1", "clip_top5", "pixel_top1", "pixel_top5", "diversity", "fd"} <= set(scores)
        assert 0 <= scores["pixel_top1"] <= scores["pixel_top5"] <= 1
    assert card["vqgan"]["n"] == len(data) and card["vqgan"]["psnr_db"] > 0
    words = {w for c in data.captions("train") for w in prompt_words(c)}
    assert set(card["vocabulary"]) == words and "emoji" in words and "circle" not in words
    assert "Twemoji" in card["licence"] and "CC-BY" in card["licence"] and card["draws"].startswith("emoji")
    spec = _registered_folder(out)
    assert spec.unknown_words("a red circle emoji") == [w for w in ("red", "circle") if w not in words]


def test_the_bundled_model_uses_studios_own_small_clip_file():
    """The small CLIP is shipped once (in studio.ml); the digest counts contents, not places."""
    import hashlib

    from studio_clip_gen import model_dir

    root = Path(model_dir.__file__).parent / "weights"
    manifest = model_dir.read_manifest(root)
    assert not (root / "clip.safetensors").exists()
    clip = model_dir.clip_path(root, manifest["clip"])
    assert clip.name == "clip-small.safetensors" and clip.is_file()
    inner = [hashlib.sha256((root / manifest[k]).read_bytes()).hexdigest() for k in ("vqgan", "transformer")]
    inner.append(hashlib.sha256(clip.read_bytes()).hexdigest())
    # its own re-ranking CLIP is not one Studio ships elsewhere: it lives in the folder, and counts
    # next; the claims classifier counts last
    assert manifest["rerank"] == {"kind": "bundled", "file": "rerank-clip.safetensors"}
    inner.append(hashlib.sha256((root / "rerank-clip.safetensors").read_bytes()).hexdigest())
    assert manifest["claims"] == {"file": "claims.safetensors", "clip_weight": 0.0}
    inner.append(hashlib.sha256((root / "claims.safetensors").read_bytes()).hexdigest())
    # and the weight of the CLIP beside the classifier, a setting of the model
    expected = hashlib.sha256("".join(inner).encode() + b"claims clip_weight 0.0").hexdigest()
    assert model_dir.weights_sha256(root, manifest) == expected


def test_a_transformer_run_on_the_bundled_clip_imports_as_it_is(parts, squares, studio_home, tmp_path, monkeypatch):
    """No --clip to train (the bundled small CLIP is the default) and no parts to name at import:
    the run's model_card.json records the VQGAN and the CLIP."""
    from click.testing import CliRunner

    from studio.ml import BUNDLED_CLIP_FILE
    from studio_clip_gen import commands

    if not BUNDLED_CLIP_FILE.is_file():
        pytest.skip("the bundled CLIP is not installed")
    monkeypatch.setattr(commands, "_dataset", lambda name, size: squares)
    run = tmp_path / "run"
    result = CliRunner().invoke(commands.clip_gen_group, [
        "train", "transformer", "--out", str(run), "--vqgan", str(parts / "vqgan.safetensors"), "--width", "32",
        "--layers", "1", "--heads", "2", "--steps", "2", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "{" not in result.stdout and "weights:" in result.stdout  # people get a bar and a few lines
    assert f"studio models import clip-gen NAME {run}" in result.stdout
    card = json.loads((run / "model_card.json").read_text())
    assert card["stage"] == "transformer" and card["clip"]["file"] == str(BUNDLED_CLIP_FILE)
    assert card["vqgan"]["file"] == str(parts / "vqgan.safetensors")

    result = CliRunner().invoke(commands.import_command, ["mine", str(run)])
    assert result.exit_code == 0, result.output
    assert "imported clip-gen/mine" in result.output
    manifest = json.loads((studio_home / "models" / "clip-gen" / "mine" / "model.json").read_text())
    assert manifest["clip"]["kind"] == "bundled"

    result = CliRunner().invoke(commands.import_command, ["other"])
    assert result.exit_code == 2 and "run folder or --vqgan" in result.output
    result = CliRunner().invoke(commands.import_command, ["other", str(tmp_path)])
    assert result.exit_code == 1 and "model_card.json" in result.output


def test_training_commands_have_one_shape_and_json_lines_for_machines(parts, squares, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from studio.ml import BUNDLED_CLIP_FILE
    from studio_clip_gen import commands

    runner = CliRunner()
    listed = runner.invoke(commands.clip_gen_group, ["--help"]).output
    assert "train" in listed and "train-vqgan" not in listed and "train-transformer" not in listed
    assert {"vqgan", "transformer"} <= set(runner.invoke(commands.clip_gen_group, ["train", "--help"]).output.split())
    for old in ("train-vqgan", "train-transformer"):  # the older spellings still work
        assert runner.invoke(commands.clip_gen_group, [old, "--help"]).exit_code == 0

    if not BUNDLED_CLIP_FILE.is_file():
        pytest.skip("the bundled CLIP is not installed")
    monkeypatch.setattr(commands, "_dataset", lambda name, size: squares)
    result = runner.invoke(commands.clip_gen_group, [
        "train-transformer", "--out", str(tmp_path / "run"), "--vqgan", str(parts / "vqgan.safetensors"),
        "--width", "32", "--layers", "1", "--heads", "2", "--steps", "2", "--batch-size", "4", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert lines[0]["step"] == 2 and "loss" in lines[0]
    assert lines[-1]["steps"] == 2 and lines[-1]["weights"].endswith("transformer.safetensors")


def test_a_transformer_trained_with_condition_dropout_samples_with_guidance(parts, squares, studio_home, tmp_path,
                                                                            monkeypatch):
    from click.testing import CliRunner

    from studio.engine import Engine
    from studio.errors import UsageError
    from studio.config import load_settings
    from studio_clip_gen import commands
    from studio_clip_gen.checkpoints import read_safetensors

    monkeypatch.setattr(commands, "_dataset", lambda name, size: squares)
    run = tmp_path / "run"
    common = ["--clip", str(parts / "clip.safetensors"), "--clip-arch", "studio-tiny-64"]
    result = CliRunner().invoke(commands.clip_gen_group, [
        "train", "transformer", "--out", str(run), "--vqgan", str(parts / "vqgan.safetensors"), "--width", "32",
        "--layers", "1", "--heads", "2", "--steps", "3", "--batch-size", "4", "--cond-drop", "0.5", *common])
    assert result.exit_code == 0, result.output
    state, meta = read_safetensors(run / "transformer.safetensors")
    assert "null_cond" in state and meta["cond_drop"] == 0.5 and meta["gpt"]["null_condition"] is True

    for name, transformer in (("guided", run / "transformer.safetensors"), ("plain", parts / "transformer.safetensors")):
        result = CliRunner().invoke(commands.import_command, [name, "--vqgan", str(parts / "vqgan.safetensors"),
                                                              "--transformer", str(transformer), *common])
        assert result.exit_code == 0, result.output
    from studio.plugins import load_registry

    engine = Engine(load_settings(), registry=load_registry())  # this process's registry predates the imports
    guided = engine.run(engine.submit("a red square", "clip-gen/guided", seed=4, params={"guidance": 2.5}).id)
    plain = engine.run(engine.submit("a red square", "clip-gen/guided", seed=4).id)
    assert guided.status == plain.status == "succeeded"
    assert guided.params["guidance"] == 2.5 and "guidance" not in plain.params  # 1 (off) is what no value means
    assert engine.images(guided.id)[0].sha256 != engine.images(plain.id)[0].sha256
    # a transformer without a null condition: refused at submit, before any job is stored
    jobs_before = len(engine.list_jobs(limit=100))
    with pytest.raises(UsageError, match="guidance.*without a null condition"):
        engine.submit("a red square", "clip-gen/plain", params={"guidance": 2.0})
    assert len(engine.list_jobs(limit=100)) == jobs_before
    result = CliRunner().invoke(commands.clip_gen_group, [
        "package", str(tmp_path / "pkg"), "--vqgan", str(parts / "vqgan.safetensors"), "--transformer",
        str(parts / "transformer.safetensors"), *common, "--eval-n", "2", "--candidates", "1", "--guidance", "3"])
    assert result.exit_code == 1 and "--cond-drop" in result.output


def test_package_names_a_clip_studio_ships_instead_of_copying_it_and_import_copies_it(parts, tmp_path, studio_home):
    """A bundled model folder shares Studio's CLIP file (as weights/ does); an imported model keeps
    a copy an upgrade cannot change. The digest counts contents, so both give the same one."""
    from click.testing import CliRunner

    from studio.ml import BUNDLED_CLIP_FILE
    from studio_clip_gen.commands import clip_gen_group
    from studio_clip_gen.model_dir import assemble, weights_sha256

    common = ["--vqgan", str(parts / "vqgan.safetensors"), "--transformer", str(parts / "transformer.safetensors"),
              "--clip", str(BUNDLED_CLIP_FILE)]
    result = CliRunner().invoke(clip_gen_group, ["package", str(tmp_path / "pkg"), *common])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "pkg" / "model.json").read_text())
    assert manifest["clip"] == {"kind": "bundled", "package": "studio.ml", "file": "weights/clip-small.safetensors"}
    assert not (tmp_path / "pkg" / "clip.safetensors").exists()
    copied = assemble(tmp_path / "copy", vqgan=parts / "vqgan.safetensors", transformer=parts / "transformer.safetensors",
                      clip=BUNDLED_CLIP_FILE)
    assert (tmp_path / "copy" / "clip.safetensors").is_file() and copied["clip"]["file"] == "clip.safetensors"
    assert copied["weights_sha256"] == weights_sha256(tmp_path / "pkg", manifest)
    generator = plugin._factory("clip-gen/pkg", tmp_path / "pkg")()
    generator.load("cpu")  # the shared CLIP is found through the package


def test_package_copies_a_rerank_clip_with_its_card_and_the_card_records_it(parts, tmp_path):
    """A re-ranking CLIP that Studio does not ship travels inside the folder, with the card
    `export-clip` wrote beside it; the model card names its digest and held-out figures."""
    import shutil

    from click.testing import CliRunner

    from studio.api import sha256_file_cached
    from studio.ml import EMOJI_CLIP_FILE
    from studio_clip_gen.card import CARD_JSON
    from studio_clip_gen.commands import clip_gen_group

    judge = tmp_path / "judge.safetensors"  # any exported small CLIP: a copy of the emoji one
    shutil.copyfile(EMOJI_CLIP_FILE, judge)
    shutil.copyfile(EMOJI_CLIP_FILE.with_suffix(".json"), judge.with_suffix(".json"))
    common = ["--vqgan", str(parts / "vqgan.safetensors"), "--transformer", str(parts / "transformer.safetensors"),
              "--clip", str(parts / "clip.safetensors"), "--clip-arch", "studio-tiny-64"]
    out = tmp_path / "model"
    result = CliRunner().invoke(clip_gen_group, ["package", str(out), *common, "--rerank-clip", str(judge),
                                                 "--eval-n", "2", "--candidates", "2"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["rerank"] == {"kind": "bundled", "file": "rerank-clip.safetensors"}
    assert manifest["source"]["rerank"] == "judge.safetensors"
    assert (out / "rerank-clip.json").read_text() == judge.with_suffix(".json").read_text()
    card = json.loads((out / CARD_JSON).read_text())
    exported = json.loads(judge.with_suffix(".json").read_text())
    assert card["rerank_clip"]["sha256"] == sha256_file_cached(judge)
    assert card["rerank_clip"]["zero_shot"] == exported["zero_shot"] and card["rerank_clip"]["steps"] == exported["steps"]
    # an open_clip file needs its architecture, named by the option that takes it
    result = CliRunner().invoke(clip_gen_group, ["package", str(tmp_path / "bad"), *common, "--rerank-clip",
                                                 str(parts / "clip.safetensors")])
    assert result.exit_code == 1 and "--rerank-clip-arch" in result.output and not (tmp_path / "bad").exists()


def test_a_part_packaged_unchanged_keeps_the_training_record_of_the_card_it_came_with(parts, tmp_path):
    """Weights trained before runs wrote their record into the file keep the one their card holds."""
    import torch
    from click.testing import CliRunner

    from studio_clip_gen.card import CARD_JSON
    from studio_clip_gen.checkpoints import write_safetensors
    from studio_clip_gen.commands import clip_gen_group
    from studio_clip_gen.vqgan import VQConfig, VQModel

    def package(out, vqgan, *extra):
        result = CliRunner().invoke(clip_gen_group, [
            "package", str(out), "--vqgan", str(vqgan), "--transformer", str(parts / "transformer.safetensors"),
            "--clip", str(parts / "clip.safetensors"), "--clip-arch", "studio-tiny-64", "--eval-n", "1",
            "--candidates", "1", *extra])
        assert result.exit_code == 0, result.output
        return json.loads((out / CARD_JSON).read_text())

    import shutil

    renamed = tmp_path / "vq-final.safetensors"  # the packaged file names its source: other bytes than its own
    shutil.copyfile(parts / "vqgan.safetensors", renamed)
    first = tmp_path / "first"
    card = package(first, renamed)
    assert card["training"]["vqgan"]["steps"] is None  # the part files hold no record
    card["training"]["vqgan"] |= {"steps": 3206, "minutes": 45.0}  # as a card written by hand for old weights
    (first / CARD_JSON).write_text(json.dumps(card))
    assert package(tmp_path / "second", first / "vqgan.safetensors")["training"]["vqgan"]["steps"] == 3206
    assert package(first, first / "vqgan.safetensors", "--force")["training"]["vqgan"]["steps"] == 3206
    # other weights do not inherit it from the card of the folder they replace
    torch.manual_seed(5)
    other = tmp_path / "other" / "vqgan.safetensors"
    other.parent.mkdir()
    cfg = VQConfig.from_dict(card["training"]["vqgan"]["vqgan"])
    write_safetensors(other, VQModel(cfg).state_dict(), {"vqgan": cfg.to_dict()})
    assert package(first, other, "--force")["training"]["vqgan"]["steps"] is None


def test_a_packaged_vqgan_keeps_its_training_record_through_packaging_again(parts, tmp_path):
    from studio_clip_gen.card import training_summary
    from studio_clip_gen.checkpoints import read_safetensors, write_safetensors
    from studio_clip_gen.model_dir import assemble

    state, meta = read_safetensors(parts / "vqgan.safetensors")
    run_export = tmp_path / "run" / "vqgan.safetensors"
    run_export.parent.mkdir()
    write_safetensors(run_export, state, {**meta, "steps": 3206, "train_seconds": 2700.0, "metrics": {"psnr": 31.3}})
    common = dict(transformer=parts / "transformer.safetensors", clip=parts / "clip.safetensors", clip_arch="studio-tiny-64")
    assemble(tmp_path / "first", vqgan=run_export, **common)
    assemble(tmp_path / "again", vqgan=tmp_path / "first" / "vqgan.safetensors", **common)
    summary = training_summary(tmp_path / "again" / "vqgan.safetensors")
    assert (summary["steps"], summary["minutes"], summary["final_metrics"]) == (3206, 45.0, {"psnr": 31.3})
    assert training_summary(tmp_path / "first" / "vqgan.safetensors")["vqgan"] == meta["vqgan"]


def test_package_and_import_take_a_claims_classifier(parts, tmp_path, studio_home):
    from click.testing import CliRunner

    from studio.ml.claims import ClaimsNet, save_claims_net
    from studio_clip_gen.commands import clip_gen_group, import_command

    save_claims_net(ClaimsNet(image_size=16, ch=8), tmp_path / "claims-run.safetensors")
    common = ["--vqgan", str(parts / "vqgan.safetensors"), "--transformer", str(parts / "transformer.safetensors"),
              "--clip", str(parts / "clip.safetensors"), "--clip-arch", "studio-tiny-64",
              "--claims", str(tmp_path / "claims-run.safetensors")]
    result = CliRunner().invoke(clip_gen_group, ["package", str(tmp_path / "pkg"), *common])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "pkg" / "model.json").read_text())
    assert manifest["claims"] == {"file": "claims.safetensors", "clip_weight": 0.0}  # the classifier alone
    assert manifest["source"]["claims"] == "claims-run.safetensors"
    assert (tmp_path / "pkg" / "claims.safetensors").read_bytes() == (tmp_path / "claims-run.safetensors").read_bytes()
    result = CliRunner().invoke(import_command, ["judged", *common, "--claims-clip-weight", "0.5"])
    assert result.exit_code == 0, result.output
    from studio_clip_gen.plugin import imported_root

    imported = json.loads((imported_root() / "judged" / "model.json").read_text())
    assert imported["claims"] == {"file": "claims.safetensors", "clip_weight": 0.5}
    # a weight without a classifier to weigh it against, or below zero: usage errors, nothing written
    result = CliRunner().invoke(clip_gen_group, ["package", str(tmp_path / "noclaims"), *common[:-2],
                                                 "--claims-clip-weight", "1"])
    assert result.exit_code == 2 and "give the file too" in result.output and not (tmp_path / "noclaims").exists()
    for bad in ("-1", "nan", "inf", "1e400"):
        result = CliRunner().invoke(clip_gen_group, ["package", str(tmp_path / "bad-w"), *common, "--claims-clip-weight", bad])
        assert result.exit_code == 2 and not (tmp_path / "bad-w").exists(), (bad, result.output)
    # a file that is not a claims classifier: one line, nothing written
    result = CliRunner().invoke(clip_gen_group, ["package", str(tmp_path / "bad"), *common[:-1],
                                                 str(parts / "clip.safetensors")])
    assert result.exit_code == 1 and "not a claims classifier" in result.output and not (tmp_path / "bad").exists()
