"""A tiny CLIP run: the loss goes down, checkpoints resume, the bundled file round-trips."""

import json

import pytest
import torch

from studio.ml import clip_configs, shapes
from studio.ml.train_clip import encode_text_trimmed, load_checkpoint_model, read_train_state, train_clip, truth_matrix

FAST = dict(batch_size=16, lr=2e-3, warmup_steps=1, threads=1, eval_n=8, log_every=1, eval_every_s=1e9, checkpoint_every_s=1e9)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip-run")
    records = []
    summary = train_clip(out, steps=12, progress=records.append, **FAST)
    return out, summary, records


def test_loss_goes_down_and_files_are_written(run):
    out, summary, records = run
    assert summary["step"] == 12 and len(records) == 12
    first = sum(r["loss"] for r in records[:3]) / 3
    last = sum(r["loss"] for r in records[-3:]) / 3
    assert last < first
    for name in ("checkpoint/model.safetensors", "checkpoint/train_state.pt", "best/model.safetensors",
                 "metrics.jsonl", "model_card.md", "model_card.json"):
        assert (out / name).is_file(), name
    card = json.loads((out / "model_card.json").read_text())
    assert card["steps"] == 12 and set(card["evaluation"]) >= {"colour", "shape", "relation", "order"}
    assert "Held-out" in (out / "model_card.md").read_text()
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"


def test_resume_continues_from_the_checkpoint(run):
    out, _, _ = run
    before = read_train_state(out / "checkpoint")
    assert before["step"] == 12 and before["optimizer"]["state"]
    summary = train_clip(out, steps=14, resume=True, progress=lambda r: None, **FAST)
    assert summary["steps_this_run"] == 2 and summary["step"] == 14
    after = read_train_state(out / "checkpoint")
    assert after["elapsed"] > before["elapsed"]


def test_trimmed_text_encoding_equals_open_clip():
    model = clip_configs.create_small_clip().eval()
    tokens = clip_configs.get_tokenizer()(["a red circle", "a small blue square to the left of an orange diamond"])
    with torch.no_grad():
        assert torch.allclose(encode_text_trimmed(model, tokens), model.encode_text(tokens, normalize=True), atol=1e-5)


def test_truth_matrix_marks_every_true_caption():
    scenes = [shapes.sample_scene(0, i) for i in range(30)]
    caps = [shapes.canonical_caption(s) for s in scenes]
    truth = truth_matrix(scenes, caps)
    assert truth.diagonal().all()
    for i, s in enumerate(scenes):
        for j, c in enumerate(caps):
            assert bool(truth[i, j]) == shapes.caption_is_true(c, s)


def test_bundled_file_is_small_and_equivalent(run, tmp_path):
    out, _, _ = run
    info = clip_configs.export_bundled_clip(out, tmp_path / "clip.safetensors")
    assert info["bytes"] < 5_000_000 and info["rows_kept"] < 64
    loaded = clip_configs.load_bundled_clip(tmp_path / "clip.safetensors")
    original, _, _ = load_checkpoint_model(out)
    tok = clip_configs.get_tokenizer()
    texts = [p.text for p in shapes.eval_prompts(8)]
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(tok(texts), normalize=True), original.encode_text(tok(texts), normalize=True), atol=2e-2)
        assert torch.allclose(loaded.encode_image(images, normalize=True), original.encode_image(images, normalize=True), atol=2e-2)
    assert type(loaded).__name__ == "CLIP" and loaded.token_embedding.weight.shape[0] == 49408


def test_requires_a_limit(tmp_path):
    with pytest.raises(ValueError):
        train_clip(tmp_path)


def test_probe_run_resumes_with_its_head(tmp_path):
    train_clip(tmp_path, steps=2, probe_weight=0.5, progress=lambda r: None, **FAST)
    state = read_train_state(tmp_path / "checkpoint")
    assert state["probe"] and state["probe_optimizer"]["state"]
    summary = train_clip(tmp_path, steps=3, resume=True, progress=lambda r: None, **FAST)
    assert summary["step"] == 3


def test_export_command_writes_file_and_card(run, tmp_path):
    from click.testing import CliRunner

    from studio.cli import add_plugin_commands, cli

    add_plugin_commands(cli)
    out, _, _ = run
    target = tmp_path / "clip.safetensors"
    result = CliRunner().invoke(cli, ["train", "export-clip", str(out), str(target), "--checkpoint", "checkpoint"])
    assert result.exit_code == 0, result.output
    card = json.loads(target.with_suffix(".json").read_text())
    assert card["steps"] == read_train_state(out / "checkpoint")["step"]
    assert set(card["zero_shot"]) >= {"colour", "shape", "relation", "order"}
    assert card["file"]["bytes"] == target.stat().st_size
    missing = CliRunner().invoke(cli, ["train", "export-clip", str(tmp_path), str(target)])
    assert missing.exit_code == 1 and "no checkpoint there" in missing.output


def test_bf16_run_learns_and_keeps_float32_weights(tmp_path):
    records = []
    summary = train_clip(tmp_path, steps=12, progress=records.append, precision="bf16", **FAST)
    assert summary["step"] == 12
    assert sum(r["loss"] for r in records[-3:]) < sum(r["loss"] for r in records[:3])
    model, _, _ = load_checkpoint_model(tmp_path / "checkpoint")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert json.loads((tmp_path / "model_card.json").read_text())["training"]["precision"] == "bf16"


def test_export_keeps_the_token_rows_of_the_runs_own_captions(tmp_path):
    """A CLIP trained on other words than the shapes grammar must keep their rows when exported,
    or the shipped file would read every one of them as the mean row."""
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    captions = ["a purple zebra", "a slice of pizza", "a rocket", "a teapot"]
    for i in range(16):
        Image.new("RGB", (64, 64), (i * 15, 40, 200 - i * 10)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(captions[i % 4])
    out = tmp_path / "run"
    train_clip(out, dataset=f"folder:{data}", steps=2, progress=lambda r: None, **FAST)
    import shutil

    recorded = set(read_train_state(out / "checkpoint")["token_ids"])
    assert set(clip_configs.get_tokenizer()(captions).flatten().tolist()) <= recorded
    shutil.rmtree(data)  # the export needs the run's record, not the data
    own = clip_configs.export_bundled_clip(out / "checkpoint", tmp_path / "own.safetensors")
    grammar = clip_configs.export_bundled_clip(out / "checkpoint", tmp_path / "grammar.safetensors",
                                               keep_ids=clip_configs.grammar_token_ids())
    assert own["dataset"] == f"folder:{data}" and own["rows_kept"] > grammar["rows_kept"]
    original, _, _ = load_checkpoint_model(out / "checkpoint")
    tokens = clip_configs.get_tokenizer()(captions)
    with torch.no_grad():
        want = original.encode_text(tokens, normalize=True)
        kept = clip_configs.load_bundled_clip(tmp_path / "own.safetensors").encode_text(tokens, normalize=True)
        lost = clip_configs.load_bundled_clip(tmp_path / "grammar.safetensors").encode_text(tokens, normalize=True)
    kept_error, lost_error = (kept - want).abs().max(), (lost - want).abs().max()
    assert kept_error < 2e-2 and lost_error > 4 * kept_error, (kept_error, lost_error)


def test_a_new_run_can_start_from_an_exported_clip(run, tmp_path):
    """The exported file is what outlives a run folder; --init continues training from it."""
    from studio.ml.train_clip import initial_clip

    out, _, _ = run
    exported = tmp_path / "clip.safetensors"
    clip_configs.export_bundled_clip(out / "checkpoint", exported)
    start, kept = initial_clip(exported, "studio-tiny-64")
    want = clip_configs.load_bundled_clip(exported).state_dict()
    assert start.training and all(torch.equal(v, want[k]) for k, v in start.state_dict().items())
    recorded = read_train_state(out / "checkpoint")["token_ids"]
    assert kept == sorted(set(recorded) | set(clip_configs.grammar_token_ids()))
    with pytest.raises(ValueError, match="holds a studio-tiny-64 CLIP; train it with --model studio-tiny-64"):
        initial_clip(exported, "studio-small-64")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not weights")
    with pytest.raises(ValueError, match="not an exported Studio CLIP"):
        initial_clip(broken, "studio-tiny-64")
    summary = train_clip(tmp_path / "next", steps=1, init=str(exported), progress=lambda r: None, **{**FAST, "lr": 1e-12})
    state = read_train_state(tmp_path / "next" / "checkpoint")
    assert summary["step"] == 1 and state["config"]["init"] == str(exported)
    assert set(kept) <= set(state["token_ids"])  # the earlier run's rows count as trained
    # the run started from the file's weights (a step at lr 1e-12 leaves them), not from a fresh model
    after, _, _ = load_checkpoint_model(tmp_path / "next" / "checkpoint")
    fresh = clip_configs.create_small_clip("studio-tiny-64").state_dict()
    key = "visual.conv1.weight"
    assert torch.allclose(after.state_dict()[key], want[key], atol=1e-6)
    assert not torch.allclose(after.state_dict()[key], fresh[key], atol=1e-3)
    with pytest.raises(ValueError, match="--init starts a new one"):
        train_clip(tmp_path / "next", steps=2, resume=True, init=str(exported), progress=lambda r: None, **FAST)


def test_an_emoji_run_is_judged_on_held_out_phrasings_and_keeps_its_best(tmp_path, monkeypatch):
    """Without a held-out measure an emoji run wrote no best/ checkpoint, the one export-clip takes."""
    pytest.importorskip("resvg_py", reason="the emoji dataset needs the emoji extra")
    from studio.ml import emoji, train_clip as module
    from studio.ml.datasets import open_dataset

    options = dict(styles=["twemoji"], cache_dir=tmp_path / "cache", limit=24, workers=1)
    data = emoji.build(size=64, **options)
    monkeypatch.setattr(module, "open_dataset", lambda name, size, **kw: open_dataset(name, size=size, **options))
    monkeypatch.setattr(module, "_emoji_data", lambda _config_name: data)
    summary = train_clip(tmp_path / "run", dataset="emoji", steps=2, progress=lambda r: None, **FAST)
    assert set(summary["evaluation"]) >= {"concept_top1", "concept_top5", "score"}
    assert 0 <= summary["evaluation"]["concept_top1"] <= summary["evaluation"]["concept_top5"] <= 1
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "eval" and "concept_top5" in e for e in events)


def test_distractor_scenes_change_one_outline_and_make_every_caption_false():
    import numpy as np

    from studio.ml.checker import check_image

    rng = np.random.default_rng(0)
    kinds = set()
    for i in range(60):
        scene = shapes.sample_scene(0, i)
        changed = shapes.distractor_scene(scene, rng)
        moved = [(a, b) for a, b in zip(scene.objects, changed.objects) if a != b]
        assert len(moved) == 1  # one object, same place, size and colour, another outline
        (before, after), = moved
        assert (before.centre, before.half, before.colour) == (after.centre, after.half, after.colour)
        assert after.shape != before.shape
        kinds.add(after.shape)
        assert not any(shapes.caption_is_true(c, changed) for c in shapes.captions(scene))
        # drawn where the object was, in its colour: the judge still finds the colour
        assert check_image(shapes.render_scene(changed, off_class=True), scene.attrs()).colour_ok
    assert set(shapes.OFF_CLASS_SHAPES) <= kinds and kinds & set(shapes.SHAPES)
    with pytest.raises(ValueError, match="unknown shape 'blob'"):  # a prompt's attributes never draw one
        shapes.render_attrs({"objects": [{"colour": "red", "shape": "blob", "size": "large"}]})


def test_resized_distractors_flip_one_size_and_are_false_only_of_captions_that_name_sizes():
    import numpy as np

    from studio.ml.checker import check_image

    rng = np.random.default_rng(1)
    resized = sized_false = unsized_true = 0
    for i in range(80):
        scene = shapes.sample_scene(0, i)
        changed = shapes.distractor_scene(scene, rng, resize_share=1.0)
        (before, after), = [(a, b) for a, b in zip(scene.objects, changed.objects) if a != b]
        if after.size == before.size:  # grown, it would have crowded the other object: the outline changed
            assert len(scene.objects) == 2 and after.shape != before.shape
            continue
        assert (after.shape, after.colour) == (before.shape, before.colour)
        ratio = shapes.SIZE_FRACTION[after.size] / shapes.SIZE_FRACTION[before.size]
        assert after.half == pytest.approx(before.half * ratio)
        assert all(after.half + 1 <= c <= scene.canvas - after.half - 1 + 1e-9 for c in after.centre)  # on the canvas
        if len(scene.objects) == 2:  # still apart, on the same side: the relation reads as before
            attrs = {**changed.attrs(), "asked": {"sizes": True, "background": None}}
            assert check_image(shapes.render_scene(changed), attrs).relation_ok
        resized += 1
        for caption in shapes.captions(scene):
            named = any(size for _c, _s, size in caption.objects)
            true = shapes.caption_is_true(caption, changed)
            assert true == (not named)  # a caption naming sizes is false of it, any other still true
            sized_false += named and not true
            unsized_true += (not named) and true
        if len(scene.objects) == 1:  # the judge reads the new size from the pixels
            attrs = {**changed.attrs(), "asked": {"sizes": True, "background": None}}
            assert check_image(shapes.render_scene(changed), attrs).size_ok
    assert resized > 60 and sized_false and unsized_true  # a few grown objects would crowd the other one
    # without resizing no extra number is drawn: these are the distractors a run made before the option
    rng = np.random.default_rng(5)
    drawn = [[o.shape for o in shapes.distractor_scene(shapes.sample_scene(0, i), rng).objects] for i in range(6)]
    assert drawn == [["triangle", "diamond"], ["hexagon", "circle"], ["rounded square"], ["rounded square"],
                     ["ellipse", "square"], ["circle"]]


def test_distractor_resize_needs_distractors(tmp_path):
    with pytest.raises(ValueError, match="needs --distractor-weight"):
        train_clip(tmp_path, steps=1, distractor_resize=0.3, **FAST)
    with pytest.raises(ValueError, match="0 to 1"):
        train_clip(tmp_path, steps=1, distractor_weight=1.0, distractor_resize=1.5, **FAST)
    summary = train_clip(tmp_path / "run", steps=2, progress=lambda r: None, distractor_weight=1.0,
                         distractor_resize=0.5, **FAST)
    assert summary["step"] == 2
    assert read_train_state(tmp_path / "run" / "checkpoint")["config"]["distractor_resize"] == 0.5


def test_blur_softens_half_of_a_batch_and_keeps_the_rest():
    from studio.ml.train_clip import blur_some

    images = torch.stack([shapes_tensor(i) for i in range(16)])
    out = blur_some(images, 2.0, torch.Generator().manual_seed(0))
    same = [torch.equal(a, b) for a, b in zip(images, out)]
    assert 0 < sum(same) < 16
    changed = out[[not s for s in same]]
    edges = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert edges(changed) < edges(images[[not s for s in same]])
    assert torch.allclose(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=0.02)  # blur keeps the mean
    assert torch.equal(blur_some(images, 0.0, torch.Generator()), images)


def shapes_tensor(index: int) -> torch.Tensor:
    from studio.ml.datasets import ImageTransform

    return ImageTransform(64)(shapes.render_scene(shapes.sample_scene(0, index)))


def test_distractor_loss_prefers_the_true_image_and_skips_invalid_rows():
    from studio.ml.train_clip import distractor_loss

    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    img = txt.clone()  # each caption's own image matches it exactly
    other = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(30.0)
    good, parts = distractor_loss(txt, img, other, scale, torch.ones(4, dtype=torch.bool))
    bad, _ = distractor_loss(txt, other, img, scale, torch.ones(4, dtype=torch.bool))
    assert good < 0.1 < bad and parts["distract_acc"] == 1.0
    none, parts = distractor_loss(txt, img, other, scale, torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0 and parts == {}


def test_a_run_with_distractors_trains_and_records_them(tmp_path):
    records = []
    summary = train_clip(tmp_path, steps=6, progress=records.append, distractor_weight=1.0, blur=1.5, **FAST)
    assert summary["step"] == 6 and len(records) == 6 and all(0 <= r["distract_acc"] <= 1 for r in records)
    state = read_train_state(tmp_path / "checkpoint")
    assert state["config"]["distractor_weight"] == 1.0 and state["config"]["blur"] == 1.5


def test_an_image_transform_sees_every_training_image_and_needs_a_name(tmp_path):
    seen = []

    def transform(images):
        seen.append(images.shape)
        return -images  # any rendering; here a negative

    summary = train_clip(tmp_path / "run", steps=2, progress=lambda r: None, distractor_weight=1.0, image_transform=transform,
                         render="negative", **FAST)
    assert summary["step"] == 2 and seen == [(32, 3, 64, 64)] * 2  # 16 images and their 16 distractors
    assert read_train_state(tmp_path / "run" / "checkpoint")["config"]["render"] == "negative"
    with pytest.raises(ValueError, match="render name"):
        train_clip(tmp_path / "unnamed", steps=1, image_transform=transform, **FAST)
    with pytest.raises(ValueError, match="render name"):
        train_clip(tmp_path / "missing", steps=1, render="negative", **FAST)
    # a resumed run goes on rendering as it began, or does not go on
    with pytest.raises(ValueError, match="resume it with that image_transform"):
        train_clip(tmp_path / "run", steps=3, resume=True, **FAST)
    assert train_clip(tmp_path / "run", steps=3, resume=True, image_transform=transform, **FAST)["step"] == 3


def test_distractors_need_the_shapes_dataset(tmp_path):
    with pytest.raises(ValueError, match="needs --dataset shapes"):
        train_clip(tmp_path, dataset="emoji", steps=1, distractor_weight=1.0, **FAST)


def test_an_image_and_its_distractor_are_blurred_alike():
    from studio.ml.train_clip import blur_some

    images = torch.stack([shapes_tensor(i) for i in range(8)])
    changed = 0
    for seed in range(6):
        out = blur_some(torch.cat([images, images]), 2.0, torch.Generator().manual_seed(seed), groups=2)
        assert torch.equal(out[:8], out[8:])
        changed += not torch.equal(out, torch.cat([images, images]))
    assert changed
