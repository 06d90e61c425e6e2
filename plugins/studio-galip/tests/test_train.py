"""Training: the official loss terms, finite gradients, resumable runs and their outputs."""

from __future__ import annotations

import json

import pytest
import torch
from galip_helpers import make_tiny_clip, make_tiny_nets

from studio_galip.checkpoints import read_official, read_studio
from studio_galip.model import GalipConfig
from studio_galip.model import build_nets
from studio_galip.train import (
    BETAS, TrainOptions, batches, claim_batch, default_config, default_lr_g, ma_gp, mismatched, train_galip,
    train_step,
)


class ToyColours:
    """Map-style dataset: flat red/green/blue squares with their captions."""

    names = ("red", "green", "blue")

    def __init__(self, size: int = 48, n: int = 30) -> None:
        self.size, self.n = size, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        image = torch.full((3, self.size, self.size), -1.0)
        image[i % 3] = 1.0
        return {"image": image, "caption": f"a {self.names[i % 3]} square", "attrs": {"colour": self.names[i % 3]}}


def test_ma_gp_is_two_times_mean_norm_to_the_sixth():
    feats = torch.randn(3, 2, 4, 2, 2, requires_grad=True)
    sent = torch.randn(3, 5, requires_grad=True)
    w, v = torch.randn(2, 4, 2, 2), torch.randn(5)
    pred = (feats * w).flatten(1).sum(1) + (sent * v).sum(1)
    expected = 2.0 * (w.pow(2).sum() + v.pow(2).sum()).sqrt() ** 6
    torch.testing.assert_close(ma_gp(feats, sent, pred), expected)


def test_mismatched_captions_are_rolled_by_one():
    sent = torch.arange(6.0).view(3, 2)
    assert mismatched(sent).tolist() == [[2, 3], [4, 5], [0, 1]]


def test_small_clip_defaults_and_official_defaults():
    small = default_config(make_tiny_clip())
    assert small.cond_scale == "sqrt_dim" and default_lr_g(small) == 4e-4
    import open_clip

    with torch.device("meta"):
        official = default_config(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None, device="meta"))
    assert official == GalipConfig() and default_lr_g(official) == 1e-4


def test_one_step_runs_every_loss_term_with_finite_gradients():
    nets = make_tiny_nets(cond_scale="sqrt_dim")
    for net in (nets.G, nets.D, nets.C):
        net.train()
    opt_g = torch.optim.Adam([p for p in nets.G.parameters() if p.requires_grad], lr=4e-4, betas=BETAS)
    opt_d = torch.optim.Adam(list(nets.D.parameters()) + list(nets.C.parameters()), lr=4e-4, betas=BETAS)
    before = {n: [p.detach().clone() for p in net.parameters() if p.requires_grad]
              for n, net in (("G", nets.G), ("D", nets.D), ("C", nets.C))}
    data = ToyColours()
    images = torch.stack([data[i]["image"] for i in range(4)])
    captions = [data[i]["caption"] for i in range(4)]
    losses = train_step(nets, opt_g, opt_d, images, captions, TrainOptions(), generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"errD", "errD_real", "errD_fake", "errD_mis", "MA_GP", "errG", "G_adv", "clip_sim"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert losses["MA_GP"] > 0
    for name, net in (("G", nets.G), ("D", nets.D), ("C", nets.C)):
        params = [p for p in net.parameters() if p.requires_grad]
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in params), name
        assert any(not torch.equal(p, q) for p, q in zip(params, before[name])), f"{name} did not move"
    assert not any(p.requires_grad for p in nets.clip.parameters())


def test_train_writes_outputs_and_resumes(tmp_path):
    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    run = tmp_path / "run"
    card = train_galip(run, ToyColours(), clip, config=cfg, steps=3, batch_size=4, sample_every=2,
                       show_progress=False, log_every=1, meta={"dataset": "toy"})
    assert card["steps"] == 3 and card["dataset"] == "toy" and card["lr_g"] == 4e-4
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert (run / "samples" / "step_000002.png").is_file() and (run / "samples" / "step_000003.png").is_file()
    ckpt = read_official(run / "checkpoint.pt")  # official layout, weights_only
    assert set(ckpt.states) == {"netG", "netD", "netC"} and ckpt.config == cfg and ckpt.extra["step"] == 3

    card = train_galip(run, ToyColours(), clip, steps=5, batch_size=4, sample_every=100, show_progress=False)
    assert card["steps"] == 5
    weights = read_studio(run / "galip.safetensors")
    assert weights.config == cfg and weights.meta["steps"] == 5
    assert json.loads((run / "model_card.json").read_text())["weights_sha256"] == card["weights_sha256"]


def test_a_resumed_run_trains_at_its_own_learning_rates_with_the_saved_moments(tmp_path):
    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    run = tmp_path / "run"
    train_galip(run, ToyColours(), clip, config=cfg, steps=2, batch_size=4, show_progress=False)
    card = train_galip(run, ToyColours(), clip, steps=3, batch_size=4, show_progress=False, lr_g=1e-4, lr_d=2e-4)
    assert (card["lr_g"], card["lr_d"]) == (1e-4, 2e-4)
    optimizers = read_official(run / "checkpoint.pt").extra["optimizers"]
    for name, lr in (("optimizer_G", 1e-4), ("optimizer_D", 2e-4)):
        assert {group["lr"] for group in optimizers[name]["param_groups"]} == {lr}, name
        assert {int(state["step"]) for state in optimizers[name]["state"].values()} == {3}, name  # moments kept


def test_train_needs_a_budget(tmp_path):
    with pytest.raises(ValueError, match="steps or minutes"):
        train_galip(tmp_path, ToyColours(), make_tiny_clip())
    with pytest.raises(TypeError, match="unknown training option"):
        train_galip(tmp_path, ToyColours(), make_tiny_clip(), steps=1, colour="red")


class IterableColours:
    """An iterable without __len__/__getitem__ (a stream): read in order, restarted at the end."""

    def __init__(self, n: int = 3) -> None:
        self.items = [ToyColours()[i] for i in range(n)]

    def __iter__(self):
        return iter(self.items)


def test_iterable_datasets_are_cycled(tmp_path):
    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    card = train_galip(tmp_path, IterableColours(), clip, config=cfg, steps=2, batch_size=4, show_progress=False)
    assert card["steps"] == 2


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_paths_train_in_half_and_keep_float32_weights(precision):
    """fp16 (autocast + GradScaler, scaled MA-GP) and bf16 (autocast alone), on the CPU."""
    nets = make_tiny_nets(cond_scale="sqrt_dim")
    opt_g = torch.optim.Adam([p for p in nets.G.parameters() if p.requires_grad], lr=4e-4, betas=BETAS)
    opt_d = torch.optim.Adam(list(nets.D.parameters()) + list(nets.C.parameters()), lr=4e-4, betas=BETAS)
    data = ToyColours()
    images = torch.stack([data[i]["image"] for i in range(4)])
    seen = []
    hook = nets.G.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    losses = train_step(nets, opt_g, opt_d, images, [data[i]["caption"] for i in range(4)],
                        TrainOptions(precision=precision),
                        scaler=torch.amp.GradScaler("cpu", init_scale=16.0) if precision == "fp16" else None,
                        precision=precision)
    hook.remove()
    assert seen == [torch.float16 if precision == "fp16" else torch.bfloat16]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert all(p.dtype == torch.float32 for p in nets.G.parameters())


def test_fp16_on_the_cpu_is_refused_with_the_alternative(tmp_path):
    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA device; use bf16"):
        train_galip(tmp_path, ToyColours(), clip, config=cfg, steps=1, batch_size=4, precision="fp16",
                    show_progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_few_steps_lower_the_d_loss_and_give_finite_images(tmp_path):
    """Ten steps from scratch: D learns to tell real from fake, and G's images stay finite.

    G's lr is the official 1e-4 so that D keeps the upper hand for these first steps (at 4e-4
    the tiny G catches up within ten steps and the D loss oscillates). With a fixed seed the
    drop is about 0.2 (from the ~2.0 of an untrained D); the margin asked for is 0.05.
    """
    import math

    import numpy as np

    from studio.generators import Request
    from studio_galip.checkpoints import load_into, read_weights
    from studio_galip.generator import GalipGenerator
    from studio_galip.model import build_nets

    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    run = tmp_path / "run"
    train_galip(run, ToyColours(), clip, config=cfg, steps=10, batch_size=8, lr_g=1e-4, seed=0, sample_every=1000,
                show_progress=False, log_every=1)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if k != "step")
    d = [r["errD"] for r in rows]
    first, last = sum(d[:3]) / 3, sum(d[-3:]) / 3
    assert last < first - 0.05, d

    weights = read_weights(run / "galip.safetensors")
    nets = build_nets(weights.config, clip, with_d=False)
    load_into(nets, weights, run / "galip.safetensors")
    with torch.no_grad():
        raw = nets.G.eval()(torch.randn(4, cfg.nz, generator=torch.Generator().manual_seed(0)),
                            torch.randn(4, cfg.cond_dim, generator=torch.Generator().manual_seed(1)))
    assert raw.shape == (4, 3, cfg.image_size, cfg.image_size) and torch.isfinite(raw).all()
    gen = GalipGenerator.from_nets(nets)
    gen.load("cpu")
    # generate() fails the job on NaN/inf or a single-colour image, so returning is the check.
    images = gen.generate([Request("a red square", s) for s in range(3)], lambda done, total: None)
    assert len({np.asarray(r.image).tobytes() for r in images}) == 3


def test_pixel_discriminator_trains_with_its_own_terms_and_resumes(tmp_path):
    """NetP adds errP (D side) and G_adv_P (G side), moves, and is saved with the run."""
    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    run = tmp_path / "run"
    card = train_galip(run, ToyColours(), clip, config=cfg, steps=2, batch_size=4, sample_every=100,
                       show_progress=False, log_every=1, pixel_weight=1.0)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"errP", "G_adv_P"} <= set(last) and card["pixel_weight"] == 1.0
    p_state = torch.load(run / "checkpoint.pt", weights_only=True)["netP"]
    card = train_galip(run, ToyColours(), clip, steps=4, batch_size=4, sample_every=100, show_progress=False,
                       pixel_weight=1.0)
    assert card["steps"] == 4
    moved = torch.load(run / "checkpoint.pt", weights_only=True)["netP"]
    assert any(not torch.equal(p_state[k], moved[k]) for k in p_state)
    with pytest.raises(Exception, match="without the pixel discriminator"):
        train_galip(tmp_path / "run2", ToyColours(), clip, config=cfg, steps=1, batch_size=4, show_progress=False)
        train_galip(tmp_path / "run2", ToyColours(), clip, steps=2, batch_size=4, show_progress=False, pixel_weight=1.0)


def test_init_g_starts_from_a_weights_file(tmp_path):
    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    first = train_galip(tmp_path / "a", ToyColours(), clip, config=cfg, steps=2, batch_size=4, sample_every=100,
                        show_progress=False)
    source = tmp_path / "a" / "galip.safetensors"
    card = train_galip(tmp_path / "b", ToyColours(), clip, steps=1, batch_size=4, sample_every=100,
                       show_progress=False, init_g=str(source), lr_g=1e-12, lr_d=1e-12)
    assert card["init_g"]["sha256"] == first["weights_sha256"] and card["config"] == cfg.to_dict()
    before, after = read_studio(source).states["netG"], read_studio(tmp_path / "b" / "galip.safetensors").states["netG"]
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)


def _aux_nets(clip):
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    nets = build_nets(cfg, clip, pixel_d=True, n_aux=48)
    for net in (nets.G, nets.D, nets.C, nets.P):
        net.train()
    opt_g = torch.optim.Adam([p for p in nets.G.parameters() if p.requires_grad], lr=4e-4, betas=BETAS)
    opt_d = torch.optim.Adam([*nets.D.parameters(), *nets.C.parameters(), *nets.P.parameters()], lr=4e-4,
                             betas=BETAS)
    return nets, opt_g, opt_d


def _shapes_batch(n: int = 8):
    from studio.ml.datasets import ShapesDataset

    images, captions, claims = next(batches(ShapesDataset(size=48), n, seed=0))
    return images, captions, claim_batch(claims, "cpu")


def test_aux_classifier_learns_the_captions_pairs_from_real_pictures():
    """On one batch of shapes pictures, the classifier's logits for the (colour, shape) pairs the
    captions name rise above the others': it reads the claims off the pixels."""
    torch.manual_seed(0)
    nets, opt_g, opt_d = _aux_nets(make_tiny_clip())
    images, captions, (targets, mask) = _shapes_batch()

    def margin() -> float:
        with torch.no_grad():
            logits = nets.P.classify(nets.P.features(images))[:, :32]
        named = targets[:, :32] > 0
        return (logits[named].mean() - logits[~named].mean()).item()

    before = margin()
    opts = TrainOptions(pixel_weight=1.0, aux_weight=1.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        losses = train_step(nets, opt_g, opt_d, images, captions, opts, generator=gen, claims=(targets, mask))
    assert abs(before) < 0.5 and margin() > 1.0
    assert {"errP_aux", "G_aux"} <= set(losses)


def test_aux_term_is_added_to_the_generators_loss():
    import copy

    torch.manual_seed(0)
    nets, _, _ = _aux_nets(make_tiny_clip())
    images, captions, claims = _shapes_batch(4)
    out = {}
    for weight in (0.0, 3.0):
        twin = copy.deepcopy(nets)
        opt_g = torch.optim.Adam([p for p in twin.G.parameters() if p.requires_grad], lr=0.0)
        opt_d = torch.optim.Adam([*twin.D.parameters(), *twin.C.parameters(), *twin.P.parameters()], lr=0.0)
        out[weight] = train_step(twin, opt_g, opt_d, images, captions, TrainOptions(pixel_weight=1.0, aux_weight=weight),
                                 generator=torch.Generator().manual_seed(1), claims=claims)
    assert "G_aux" not in out[0.0]
    assert out[3.0]["errG"] == pytest.approx(out[0.0]["errG"] + 3.0 * out[3.0]["G_aux"], abs=1e-4)


def test_aux_classifier_needs_the_pixel_discriminator_and_shapes_captions(tmp_path):
    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    with pytest.raises(ValueError, match="pixel_weight > 0"):
        train_galip(tmp_path / "a", ToyColours(), clip, config=cfg, steps=1, batch_size=4, show_progress=False,
                    aux_weight=1.0)
    with pytest.raises(ValueError, match="shapes grammar"):
        train_galip(tmp_path / "b", ToyColours(), clip, config=cfg, steps=1, batch_size=4, show_progress=False,
                    pixel_weight=1.0, aux_weight=1.0)


def test_a_run_with_the_aux_classifier_resumes_only_with_it(tmp_path):
    from studio.api import WeightsError
    from studio.ml.datasets import ShapesDataset

    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    run = tmp_path / "run"
    card = train_galip(run, ShapesDataset(size=48), clip, config=cfg, steps=2, batch_size=4, sample_every=100,
                       show_progress=False, pixel_weight=1.0, aux_weight=2.0)
    assert card["aux_weight"] == 2.0
    assert "aux.weight" in torch.load(run / "checkpoint.pt", weights_only=True)["netP"]
    card = train_galip(run, ShapesDataset(size=48), clip, steps=3, batch_size=4, sample_every=100,
                       show_progress=False, pixel_weight=1.0, aux_weight=2.0)
    assert card["steps"] == 3
    with pytest.raises(WeightsError, match="with the auxiliary classifier"):
        train_galip(run, ShapesDataset(size=48), clip, steps=4, batch_size=4, show_progress=False, pixel_weight=1.0)


def test_a_named_dataset_opens_at_the_generators_size_with_its_options(tmp_path):
    from studio_galip.train import open_named_dataset

    items = open_named_dataset("shapes", 32, {"two_object_share": 1.0})
    first = items[0]
    assert first["image"].shape == (3, 32, 32) and len(first["attrs"]["objects"]) == 2
    with pytest.raises(ValueError, match="dataset 'shapes'.*colourz"):
        open_named_dataset("shapes", 32, {"colourz": 1})
    with pytest.raises(ValueError, match="by name"):
        open_named_dataset(ToyColours(), 48, {"two_object_share": 1.0})

    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    card = train_galip(tmp_path / "run", "shapes", clip, config=cfg, steps=1, batch_size=4, sample_every=100,
                       show_progress=False, dataset_options={"two_object_share": 1.0})
    assert card["dataset_options"] == {"two_object_share": 1.0}  # the card says what the run saw


def test_pictures_of_another_size_than_the_generators_are_refused(tmp_path):
    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    with pytest.raises(ValueError, match=r"\(32, 32\) pixels but the generator draws 48x48"):
        train_galip(tmp_path, ToyColours(size=32), clip, config=cfg, steps=1, batch_size=4, show_progress=False)


def test_a_run_with_a_moving_average_ships_and_resumes_it(tmp_path):
    from safetensors.torch import load_file

    from studio_galip.model_dir import import_model
    from studio_galip.train import generator_weights

    from galip_helpers import TINY_ARCH, save_clip

    clip = make_tiny_clip()
    clip_file = tmp_path / "clip.pt"
    save_clip(clip_file, clip)
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    run = tmp_path / "run"
    card = train_galip(run, ToyColours(), clip, config=cfg, steps=3, batch_size=4, show_progress=False, ema=0.5,
                       lr_g=1e-2)
    assert card["ema"] == 0.5
    ckpt = read_official(run / "checkpoint.pt")
    average, trained = ckpt.extra["netG_ema"], ckpt.states["netG"]
    moved = [k for k in average if average[k].is_floating_point() and not torch.equal(average[k], trained[k])]
    assert moved  # the average lags the trained weights
    shipped = {k.removeprefix("netG."): v for k, v in load_file(run / "galip.safetensors").items()}
    assert all(torch.equal(shipped[k], average[k]) for k in average)  # the run ships the average

    nets = build_nets(cfg, clip)
    nets.G.load_state_dict(trained, strict=False)
    with generator_weights(nets.G, average):
        assert all(torch.equal(nets.G.state_dict()[k], average[k]) for k in moved)
    assert all(torch.equal(nets.G.state_dict()[k], trained[k]) for k in moved)  # its own weights come back

    imported = import_model("avg", run / "checkpoint.pt", clip_file, TINY_ARCH, tmp_path / "models")
    assert "moving average" in imported.data["generator"]
    imported_g = {k.removeprefix("netG."): v for k, v in load_file(imported.folder / "galip.safetensors").items()}
    assert all(torch.equal(imported_g[k], average[k]) for k in moved)

    card = train_galip(run, ToyColours(), clip, steps=4, batch_size=4, show_progress=False, ema=0.5, lr_g=1e-2)
    resumed = read_official(run / "checkpoint.pt").extra["netG_ema"]
    last = read_official(run / "checkpoint.pt").states["netG"]
    for k in moved[:3]:  # one more step of the same average: halfway between the saved average and the new weights
        assert torch.allclose(resumed[k], (average[k] + last[k]) / 2, atol=1e-6)
