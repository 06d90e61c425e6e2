"""The VQGAN ceiling: the pixel judge on reconstructions bounds what CLIP-GEN can draw."""

import json

import pytest
import torch
import torch.nn.functional as F

from studio_clip_gen.ceiling import FIGURES, reconstruction_scores


def test_a_perfect_reconstruction_keeps_every_figure():
    scores = reconstruction_scores(lambda x: x, n=48)
    assert set(scores) == set(FIGURES)
    for name in ("colour", "shape", "relation", "size", "background"):
        assert scores[name] >= 0.98, (name, scores)
    assert scores["blank"] == 0.0


def test_a_coarse_grid_loses_shapes_but_keeps_colours():
    """A decoder that knows only a 16x16 grid of flat cells, smoothly blended (4 px each at 64 px),
    rounds every corner: the shape figure drops while colours and positions survive."""
    def blocky(x):
        return F.interpolate(F.avg_pool2d(x, 4), scale_factor=4, mode="bilinear", align_corners=False)

    exact, coarse = reconstruction_scores(lambda x: x, n=48), reconstruction_scores(blocky, n=48)
    assert coarse["shape"] <= exact["shape"] - 0.3, coarse
    assert coarse["colour"] >= 0.95 and coarse["relation"] >= 0.9, coarse


def test_judge_vqgan_measures_a_vqgan_file_and_refuses_other_sizes(parts, tmp_path):
    from click.testing import CliRunner

    from studio_clip_gen.checkpoints import write_safetensors
    from studio_clip_gen.commands import clip_gen_group
    from studio_clip_gen.vqgan import VQConfig, VQModel

    torch.manual_seed(0)
    vq = VQConfig(ch=16, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(), resolution=64,
                  z_channels=8, embed_dim=8, n_embed=16, norm_groups=8)
    path = tmp_path / "vqgan.safetensors"
    write_safetensors(path, VQModel(vq).state_dict(), {"vqgan": vq.to_dict()})
    result = CliRunner().invoke(clip_gen_group, ["judge-vqgan", str(path), "-n", "8", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["n"] == 8 and set(FIGURES) <= set(figures)
    assert figures["shape"] <= 0.5  # an untrained decoder draws no shapes

    small = CliRunner().invoke(clip_gen_group, ["judge-vqgan", str(parts / "vqgan.safetensors")])
    assert small.exit_code == 1 and "needs a 64px VQGAN" in small.output


@pytest.mark.parametrize("bad", [b"", b"not a checkpoint"])
def test_judge_vqgan_refuses_a_file_that_is_no_vqgan(tmp_path, bad):
    from click.testing import CliRunner

    from studio_clip_gen.commands import clip_gen_group

    path = tmp_path / "x.safetensors"
    path.write_bytes(bad)
    result = CliRunner().invoke(clip_gen_group, ["judge-vqgan", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_train_vqgan_records_its_ceiling_in_the_run_card(tmp_path):
    from click.testing import CliRunner

    from studio_clip_gen.commands import RUN_CARD, clip_gen_group

    run = tmp_path / "run"
    result = CliRunner().invoke(clip_gen_group, [
        "train", "vqgan", "--out", str(run), "--steps", "2", "--batch-size", "2", "--disc-start", "5",
        "--judge-n", "8"])
    assert result.exit_code == 0, result.output
    assert "pixel judge on its reconstructions" in result.output
    card = json.loads((run / RUN_CARD).read_text())
    assert set(card["reconstruction_judge"]) == set(FIGURES)
    assert all(v is None or 0 <= v <= 1 for v in card["reconstruction_judge"].values())


def test_the_f4_preset_codes_64px_images_on_a_16x16_grid():
    from studio_clip_gen.commands import VQ_PRESETS
    from studio_clip_gen.vqgan import VQConfig, VQModel

    vq = VQConfig.from_dict({**VQConfig().to_dict(), **VQ_PRESETS["tiny-f4"]})
    indices = VQModel(vq).eval().encode_to_indices(torch.zeros(2, 3, 64, 64))
    assert vq.grid == 16 and tuple(indices.shape) == (2, 256)


def test_a_handful_of_scenes_gives_no_nan():
    """With one scene the relation and size figures have nothing to judge: None (JSON null), not NaN."""
    scores = reconstruction_scores(lambda x: x, n=1)
    assert scores["colour"] == 1.0 and scores["relation"] is None
    assert json.loads(json.dumps(scores, allow_nan=False)) == scores
