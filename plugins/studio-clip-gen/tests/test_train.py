"""A few steps of each stage on tiny configs reduce the loss; runs resume and write their files."""

from __future__ import annotations

import json

import torch

from studio_clip_gen.checkpoints import read_safetensors
from studio_clip_gen.gpt import GPTConfig
from studio_clip_gen.imaging import psnr
from studio_clip_gen.losses import ClipPerceptual, NLayerDiscriminator, LPIPS
from studio_clip_gen import train
from studio_clip_gen.train import (FrozenEncodings, GPTTrainConfig, VQTrainConfig, finite_dataset, kmeans, perturb,
                                   train_transformer, train_vqgan)
from studio_clip_gen.vqgan import VQModel


def _log(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _reconstruction_psnr(model, items):
    x = torch.stack([item["image"] for item in items])
    with torch.no_grad():
        return psnr(x, model.eval()(x)[0])


def test_vqgan_training_reduces_loss_logs_codebook_and_resumes(tmp_path, squares, tiny_vq_config, tiny_clip):
    cfg = VQTrainConfig(steps=40, batch_size=8, lr=1e-3, disc_start=20, disc_layers=2, disc_ndf=16, kmeans_batches=2,
                        restart_every=10, log_every=10, sample_every=20, checkpoint_every=20, l2_weight=1.0)
    summary = train_vqgan(squares, tmp_path, tiny_vq_config, cfg, perceptual=ClipPerceptual(tiny_clip))
    log = _log(tmp_path)
    assert [r["step"] for r in log] == [10, 20, 30, 40]
    assert log[-1]["l1"] < log[0]["l1"]
    # PSNR of one logged batch is noisy (and the GAN switches on mid-run): score a fixed batch instead
    torch.manual_seed(cfg.seed)
    untrained = VQModel(tiny_vq_config)
    tensors, meta = read_safetensors(summary["weights"])
    trained = VQModel(tiny_vq_config)
    trained.load_state_dict(tensors)
    assert _reconstruction_psnr(trained, squares[:16]) > _reconstruction_psnr(untrained, squares[:16]) + 1
    assert log[0]["d_weight"] == 0 and log[-1]["d_weight"] > 0  # the GAN switched on at disc_start
    assert all(0 < r["usage"] <= 1 and r["perplexity"] >= 1 for r in log)
    assert (tmp_path / "samples" / "vqgan_0000020.png").is_file()
    assert meta["vqgan"] == tiny_vq_config.to_dict() and meta["steps"] == 40

    resumed = train_vqgan(squares, tmp_path, tiny_vq_config, VQTrainConfig(**{**cfg.__dict__, "steps": 50}),
                          perceptual=ClipPerceptual(tiny_clip), resume=True)
    assert resumed["steps"] == 50
    # the stated training time covers every leg of a resumed run
    assert read_safetensors(resumed["weights"])[1]["train_seconds"] > meta["train_seconds"] > 0
    assert [r["step"] for r in _log(tmp_path)][-1] == 50
    assert not list(tmp_path.glob(".*.tmp"))
    # a run's checkpoint is a VQGAN file too (judge or build on a run before it ends): same network
    from studio_clip_gen.checkpoints import load_vqgan
    from studio_clip_gen.model_dir import read_vqgan

    from_checkpoint = load_vqgan(tmp_path / "checkpoint.pt")
    assert from_checkpoint.config == tiny_vq_config
    final, _ = read_safetensors(resumed["weights"])
    assert all(torch.equal(from_checkpoint.state_dict()[k], v) for k, v in final.items())
    assert read_vqgan(tmp_path / "checkpoint.pt", None)[1] == tiny_vq_config


def test_transformer_training_reduces_loss_and_measures_the_gap(tmp_path, squares, tiny_vq_config, tiny_clip):
    torch.manual_seed(0)
    vqgan = VQModel(tiny_vq_config).eval()
    gpt = GPTConfig(n_codes=16, grid=8, width=32, n_layers=2, n_heads=2, clip_dim=16)
    cfg = GPTTrainConfig(steps=30, batch_size=8, lr=3e-3, warmup=3, log_every=10, sample_every=30, checkpoint_every=30)
    summary = train_transformer(squares, tmp_path, vqgan, tiny_clip, gpt, cfg, clip_info={"arch": "test"})
    log = _log(tmp_path)
    assert log[-1]["ce"] < log[0]["ce"]
    assert -1 <= log[-1]["cos_image_text"] <= 1 and log[-1]["cos_image_noisy_image"] < 1
    assert (tmp_path / "samples" / "transformer_0000030.png").is_file()
    _, meta = read_safetensors(summary["weights"])
    assert meta["gpt"] == gpt.to_dict() and meta["clip"] == {"arch": "test"}

    resumed = train_transformer(squares, tmp_path, vqgan, tiny_clip, gpt, GPTTrainConfig(**{**cfg.__dict__, "steps": 32}),
                                resume=True)
    assert resumed["steps"] == 32


def test_frozen_encodings_are_computed_once_per_picture_and_equal_a_fresh_encoding(squares, tiny_vq_config, tiny_clip):
    vqgan = VQModel(tiny_vq_config).eval()
    fresh = FrozenEncodings(vqgan, tiny_clip, "cpu", "fp32", cache=False)
    cached = FrozenEncodings(vqgan, tiny_clip, "cpu", "fp32", cache=True)
    calls = []
    encode = cached._encode
    cached._encode = lambda images: calls.append(len(images)) or encode(images)
    first = torch.stack([squares[i]["image"] for i in (0, 1, 2, 1)])  # picture 1 twice (two captions of one picture)
    second = torch.stack([squares[i]["image"] for i in (2, 3, 0)])
    for batch in (first, second):
        tokens, embeddings = cached(batch)
        want_tokens, want_embeddings = fresh(batch)
        assert torch.equal(tokens, want_tokens) and torch.allclose(embeddings, want_embeddings, atol=1e-6)
    assert calls == [3, 1]  # 3 distinct pictures, then only the new one


def test_the_encoding_cache_is_bounded_and_only_for_finite_datasets(squares, tiny_vq_config, tiny_clip, monkeypatch):
    monkeypatch.setattr(train, "CACHE_ITEMS", 2)
    cached = FrozenEncodings(VQModel(tiny_vq_config).eval(), tiny_clip, "cpu", "fp32", cache=True)
    batch = torch.stack([squares[i]["image"] for i in range(4)])
    tokens, _ = cached(batch)
    assert len(cached.entries) == 2 and tokens.dtype == torch.long and torch.equal(cached(batch)[0], tokens)

    class Endless(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from squares

    assert finite_dataset(range(2)) and not finite_dataset(range(3))  # CACHE_ITEMS is 2 here
    assert not finite_dataset([]) and not finite_dataset(Endless())


def test_clip_embedding_loss_trains_through_the_decoder(tmp_path, squares, tiny_vq_config, tiny_clip):
    vqgan = VQModel(tiny_vq_config).eval()
    gpt = GPTConfig(n_codes=16, grid=8, width=32, n_layers=1, n_heads=2, clip_dim=16)
    cfg = GPTTrainConfig(steps=4, batch_size=4, lr=1e-3, warmup=1, log_every=2, clip_loss_weight=1.0,
                         sample_every=100, checkpoint_every=100)
    train_transformer(squares, tmp_path, vqgan, tiny_clip, gpt, cfg)
    log = _log(tmp_path)
    assert all(0 < r["clip_loss"] < 2 for r in log)
    assert all(p.grad is None for p in vqgan.parameters())  # frozen


def test_clip_embedding_loss_skips_rows_trained_on_the_null_condition(tmp_path, squares, tiny_vq_config, tiny_clip,
                                                                     monkeypatch):
    seen = []
    real = train.clip_embedding_loss

    def spy(logits, vqgan, clip_model, target):
        seen.append((logits.shape[0], target.shape[0]))
        return real(logits, vqgan, clip_model, target)

    monkeypatch.setattr(train, "clip_embedding_loss", spy)
    vqgan = VQModel(tiny_vq_config).eval()
    gpt = GPTConfig(n_codes=16, grid=8, width=32, n_layers=1, n_heads=2, clip_dim=16, null_condition=True)
    cfg = GPTTrainConfig(steps=6, batch_size=8, lr=1e-3, warmup=1, log_every=1, clip_loss_weight=1.0,
                         cond_drop=0.5, sample_every=100, checkpoint_every=100)
    train_transformer(squares, tmp_path, vqgan, tiny_clip, gpt, cfg)
    assert seen and all(rows == targets for rows, targets in seen)
    assert sum(8 - rows for rows, _ in seen) > 0  # some rows were dropped and left out of the CLIP loss


def test_lafite_noise_and_kmeans():
    e = torch.nn.functional.normalize(torch.randn(64, 16), dim=-1)
    noisy = perturb(e, 0.3, torch.Generator().manual_seed(0))
    assert torch.allclose(noisy.norm(dim=-1), torch.ones(64))
    cos = (noisy * e).sum(-1)
    assert (cos < 1).all() and (cos > 0.9).all()
    assert torch.allclose(perturb(e, 0.0), e)
    points = torch.cat([torch.randn(50, 2) * 0.1 + c for c in (torch.tensor([5.0, 0]), torch.tensor([-5.0, 0]))])
    centres = kmeans(points, 2, generator=torch.Generator().manual_seed(0))
    assert sorted(round(float(c)) for c in centres[:, 0]) == [-5, 5]


def test_loss_modules_match_taming_layouts(manifest):
    rows = manifest("vqgan_loss_keys.txt")
    lpips = {k.removeprefix("loss.perceptual_loss."): s for k, s, _ in rows if k.startswith("loss.perceptual_loss.")}
    with torch.device("meta"):
        assert {k: list(v.shape) for k, v in LPIPS().state_dict().items()} == lpips
        disc3 = {k: list(v.shape) for k, v in NLayerDiscriminator(n_layers=3).state_dict().items()}
        disc2 = {k: list(v.shape) for k, v in NLayerDiscriminator(n_layers=2).state_dict().items()}
    discs = [k.removeprefix("loss.discriminator.") for k, _, _ in rows if k.startswith("loss.discriminator.")]
    assert list(disc3) == discs[:22] and list(disc2) == discs[22:]


def test_bf16_training_learns_like_fp32_and_keeps_float32_weights(tmp_path, squares, tiny_vq_config, tiny_clip):
    """Mixed precision changes the arithmetic, not the objective: the same run in bf16 ends near the fp32 one."""
    base = dict(steps=30, batch_size=8, lr=1e-3, disc_start=1000, kmeans_batches=2, restart_every=0, log_every=10,
                sample_every=100, checkpoint_every=100, l2_weight=1.0)
    ends = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        summary = train_vqgan(squares, out, tiny_vq_config, VQTrainConfig(**base, precision=precision))
        log = _log(out)
        assert log[-1]["l1"] < 0.8 * log[0]["l1"]
        tensors, _ = read_safetensors(summary["weights"])
        assert all(t.dtype == torch.float32 for t in tensors.values())
        ends[precision] = log[-1]["l1"]
    assert abs(ends["bf16"] - ends["fp32"]) < 0.25 * ends["fp32"]

    gpt = GPTConfig(n_codes=16, grid=8, width=32, n_layers=2, n_heads=2, clip_dim=16)
    cfg = GPTTrainConfig(steps=20, batch_size=8, lr=3e-3, warmup=2, log_every=10, sample_every=100,
                         checkpoint_every=100, precision="bf16")
    torch.manual_seed(0)
    vqgan = VQModel(tiny_vq_config).eval()
    summary = train_transformer(squares, tmp_path / "gpt", vqgan, tiny_clip, gpt, cfg)
    log = _log(tmp_path / "gpt")
    assert log[-1]["ce"] < log[0]["ce"]
    assert all(t.dtype == torch.float32 for t in read_safetensors(summary["weights"])[0].values())


def test_codes_are_chosen_in_float32_under_mixed_precision(tiny_vq_config):
    """bf16 distances tie between near-equal codes; the quantizer must pick exactly the fp32 code."""
    torch.manual_seed(0)
    model = VQModel(tiny_vq_config).eval()
    with torch.no_grad():
        # codes of unit size, 0 and 1 closer than bf16 resolves a distance at this magnitude
        model.quantize.embedding.weight.normal_()
        model.quantize.embedding.weight[1] = model.quantize.embedding.weight[0] + 1e-2
        z = (model.quantize.embedding.weight[1] + 1e-3).view(1, -1, 1, 1).expand(2, -1, 3, 3).contiguous()
        exact = model.quantize(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.quantize(z)
    assert torch.equal(exact.indices, mixed.indices) and (exact.indices == 1).all()
    assert mixed.z_q.dtype == torch.float32


def test_an_unknown_precision_is_refused():
    import pytest

    from studio.ml.precision import autocast

    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        autocast("cpu", "fp8")


def test_a_run_can_start_from_a_models_transformer(parts, tmp_path):
    """--init: a shipped transformer trained further; its architecture comes from the file, a null
    condition it lacks is added for --cond-drop, and a conflicting --width is refused."""
    from click.testing import CliRunner

    from studio_clip_gen.commands import clip_gen_group

    common = ["train", "transformer", "--dataset", "shapes", "--vqgan", str(parts / "vqgan.safetensors"),
              "--clip", str(parts / "clip.safetensors"), "--clip-arch", "studio-tiny-64",
              "--init", str(parts / "transformer.safetensors"), "--json"]
    result = CliRunner().invoke(clip_gen_group, [*common, "--out", str(tmp_path / "a"), "--steps", "2",
                                                 "--batch-size", "4", "--lr", "1e-9", "--cond-drop", "0.5"])
    assert result.exit_code == 0, result.output
    start, start_meta = read_safetensors(parts / "transformer.safetensors")
    trained, meta = read_safetensors(tmp_path / "a" / "transformer.safetensors")
    assert {k: v for k, v in meta["gpt"].items() if k != "null_condition"} == \
        {k: v for k, v in start_meta["gpt"].items() if k != "null_condition"}
    assert meta["gpt"]["null_condition"] and "null_cond" in trained and "null_cond" not in start
    assert all(torch.allclose(trained[k], v, atol=1e-5) for k, v in start.items())  # loaded, barely moved
    # the run's checkpoint is a transformer file too (evaluate or import a run before it ends)
    from studio_clip_gen.model_dir import read_transformer

    state, cfg, _ = read_transformer(tmp_path / "a" / "checkpoint.pt", None)
    assert cfg == GPTConfig.from_dict(meta["gpt"]) and all(torch.equal(state[k], v) for k, v in trained.items())

    refused = CliRunner().invoke(clip_gen_group, [*common, "--out", str(tmp_path / "b"), "--steps", "1",
                                                  "--width", "64"])
    assert refused.exit_code == 2
    assert "--width 64 differs from the --init transformer's 32" in refused.output
    assert not (tmp_path / "b" / "checkpoint.pt").exists()


def test_a_run_from_init_records_what_it_started_from_and_the_card_adds_up_the_legs(parts, tmp_path):
    from click.testing import CliRunner

    from studio.api import sha256_file
    from studio_clip_gen.card import training_summary
    from studio_clip_gen.commands import clip_gen_group

    common = ["train", "transformer", "--dataset", "shapes", "--vqgan", str(parts / "vqgan.safetensors"),
              "--clip", str(parts / "clip.safetensors"), "--clip-arch", "studio-tiny-64", "--json",
              "--batch-size", "2", "--width", "32", "--layers", "2", "--heads", "2"]

    def leg(name, steps, *init):
        result = CliRunner().invoke(clip_gen_group, [*common, "--out", str(tmp_path / name), "--steps", str(steps), *init])
        assert result.exit_code == 0, result.output
        return tmp_path / name / "transformer.safetensors"

    first = leg("first", 2)  # from scratch: the file says so
    assert read_safetensors(first)[1]["init"] is None and "started_from" not in training_summary(first)
    second = leg("second", 3, "--init", str(first))
    third = leg("third", 1, "--init", str(second))
    summary = training_summary(third)
    assert summary["started_from"]["sha256"] == sha256_file(second) and summary["started_from"]["steps"] == 3
    assert summary["steps"] == 1 and summary["steps_in_all"] == 6
    assert summary["minutes_in_all"] >= summary["minutes"]
    # stopped and resumed without --init, the run still knows where it started
    resumed = CliRunner().invoke(clip_gen_group, [*common, "--out", str(tmp_path / "second"), "--steps", "4",
                                                  "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert training_summary(second)["started_from"]["sha256"] == sha256_file(first)
    # a file from before the record (parts' transformer) cannot tell what it started from: no total
    legacy = training_summary(leg("legacy", 1, "--init", str(parts / "transformer.safetensors")))
    assert legacy["started_from"]["sha256"] == sha256_file(parts / "transformer.safetensors")
    assert "steps_in_all" not in legacy


def test_init_takes_matching_options_and_a_missing_device_is_one_line(parts, tmp_path):
    from click.testing import CliRunner

    from studio_clip_gen.checkpoints import write_safetensors
    from studio_clip_gen.commands import clip_gen_group
    from studio_clip_gen.gpt import GPT

    _, meta = read_safetensors(parts / "transformer.safetensors")
    odd = GPTConfig(**{**meta["gpt"], "width": 48, "n_heads": 3})  # the default width 256 is not a multiple of 3
    write_safetensors(tmp_path / "odd.safetensors", GPT(odd).state_dict(), {"gpt": odd.to_dict()})
    common = ["train", "transformer", "--dataset", "shapes", "--vqgan", str(parts / "vqgan.safetensors"),
              "--clip", str(parts / "clip.safetensors"), "--clip-arch", "studio-tiny-64", "--json",
              "--steps", "1", "--batch-size", "2"]
    result = CliRunner().invoke(clip_gen_group, [*common, "--out", str(tmp_path / "a"), "--init",
                                                 str(tmp_path / "odd.safetensors"), "--heads", "3", "--width", "48"])
    assert result.exit_code == 0, result.output
    assert read_safetensors(tmp_path / "a" / "transformer.safetensors")[1]["gpt"]["n_heads"] == 3

    missing = CliRunner().invoke(clip_gen_group, [*common, "--out", str(tmp_path / "b"), "--device", "cuda:7"])
    assert missing.exit_code == 1 and "cuda:7" in missing.output and "Traceback" not in missing.output
    unknown = CliRunner().invoke(clip_gen_group, [*common, "--out", str(tmp_path / "c"), "--device", "gpu"])
    assert unknown.exit_code == 1 and "unknown device 'gpu'" in unknown.output
