"""training/galip-shapes/ship.py: a leg becomes the shipped model with its lineage, figures and checkpoint."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from galip_helpers import make_tiny_clip
from safetensors import safe_open

from studio.api import sha256_file
from studio_galip.checkpoints import read_official
from studio_galip.train import default_config, train_galip
from test_train import ToyColours

SHIP = Path(__file__).resolve().parents[3] / "training" / "galip-shapes" / "ship.py"


@pytest.fixture(scope="module")
def ship():
    spec = importlib.util.spec_from_file_location("galip_ship", SHIP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(shape: float) -> dict:
    figures = {"shape": {"value": shape, "n": 4}, "size": {"value": 0.75, "n": 4}, "strays": {"value": 0.0, "n": 4}, "relation": {"value": None, "n": 0},
               "fd": {"value": 1.23456, "n": 8}}
    return {"seed": 0, "prompts": "shapes eval split, whole grammar", "metrics": figures,
            "by_objects": {"1": {"shape": {"value": 1.0, "n": 2}}, "2": {"shape": {"value": 1 / 3, "n": 2}}}}


@pytest.fixture
def leg(tmp_path, ship):
    """A shipped model (two earlier legs, kept checkpoint at step 2) and a leg resumed from it to step 5."""
    clip = make_tiny_clip()
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    first = tmp_path / "first"
    run_card = train_galip(first, ToyColours(), clip, config=cfg, steps=2, batch_size=4, show_progress=False)
    weights_dir, kept_dir = tmp_path / "weights", tmp_path / "kept"
    weights_dir.mkdir(), kept_dir.mkdir()
    shutil.copy(first / "galip.safetensors", weights_dir / "galip-shapes.safetensors")
    old = {**{k: v for k, v in run_card.items() if k != "checkpoint_sha256"}, "steps": 9,
           "weights_sha256": sha256_file(weights_dir / "galip-shapes.safetensors"),
           "clip": {"arch": "tiny", "sha256": "c" * 64}, "vocabulary": ["red", "square"], "licence": "Apache-2.0",
           "history": [{"leg": 1, "steps": 7, "seconds": 100.0}, {"leg": 2, "steps": 2, "seconds": 20.5}],
           "recipe": "leg one; leg two", "eval": {"judge": "pixels", "prompts": "p", **_report(0.25)["metrics"],
                                                  "seed": 0}}
    (weights_dir / "galip-shapes.json").write_text(json.dumps(old))
    shutil.copy(first / "checkpoint.pt", kept_dir / "checkpoint-aux-2.pt")
    (kept_dir / "checkpoint-aux-2.card.json").write_text(json.dumps({"steps": 2}))
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(first / "checkpoint.pt", run / "checkpoint.pt")
    train_galip(run, ToyColours(), clip, steps=5, batch_size=4, show_progress=False)
    return run, weights_dir, kept_dir, old


def _tensors(path):
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads(fh.metadata()["meta"])


def test_a_leg_ships_with_its_lineage_figures_and_stripped_checkpoint(leg, ship):
    run, weights_dir, kept_dir, old = leg
    card = ship.ship(run, "train --minutes 9", "resumed", "one thread", weights_dir=weights_dir, kept_dir=kept_dir,
                     eval_report=_report(0.5))
    shipped = weights_dir / "galip-shapes.safetensors"
    assert card["weights_sha256"] == sha256_file(shipped)
    assert json.loads((weights_dir / "galip-shapes.json").read_text()) == card
    tensors, meta = _tensors(shipped)
    run_tensors, _ = _tensors(run / "galip.safetensors")
    assert tensors.keys() == run_tensors.keys() and all(torch.equal(tensors[k], run_tensors[k]) for k in tensors)
    assert meta == {k: v for k, v in card.items() if k not in ("weights_sha256", "checkpoint_sha256", "eval")}
    assert card["steps"] == 9 + 3 and card["history"][-1]["leg"] == 3 and card["history"][-1]["steps"] == 3
    assert card["continued_from"]["weights_sha256"] == old["weights_sha256"]
    assert card["continued_from"]["seconds"] == 120.5 and card["continued_from"]["steps"] == 9
    assert card["recipe"].startswith("leg one; leg two; train --minutes 9 (leg 3, from step 2 to 5")
    assert card["vocabulary"] == old["vocabulary"] and card["clip"] == old["clip"] and "init_g" not in card
    assert card["eval_before"]["shape"] == {"value": 0.25, "n": 4} and card["eval_before"]["weights_sha256"] == \
        old["weights_sha256"]
    assert card["eval"]["shape"]["value"] == 0.5 and card["eval"]["fd"]["value"] == 1.235
    assert card["eval"]["by_objects"]["2"]["shape"]["value"] == 0.333 and card["eval"]["relation"]["value"] is None
    assert not (kept_dir / "checkpoint-aux-2.pt").exists() and not (kept_dir / "checkpoint-aux-2.card.json").exists()
    kept = read_official(kept_dir / "checkpoint-aux-5.pt")
    assert kept.extra["step"] == 5 and kept.extra["optimizers"] == {}
    resumed_from = read_official(run / "checkpoint.pt")
    assert all(torch.equal(kept.states["netG"][k], v) for k, v in resumed_from.states["netG"].items())
    ckpt_card = json.loads((kept_dir / "checkpoint-aux-5.card.json").read_text())
    assert ckpt_card["shipped_weights_sha256"] == card["weights_sha256"]
    assert ckpt_card["stripped_checkpoint_sha256"] == sha256_file(kept_dir / "checkpoint-aux-5.pt")


def test_a_failed_eval_leaves_the_model_shipped_before(leg, ship, monkeypatch):
    run, weights_dir, kept_dir, _ = leg
    before = {p.name: p.read_bytes() for p in weights_dir.iterdir()}

    def broken(n, fd_n):
        raise RuntimeError("eval died")

    monkeypatch.setattr(ship, "run_eval", broken)
    with pytest.raises(RuntimeError, match="eval died"):
        ship.ship(run, "c", "d", "", weights_dir=weights_dir, kept_dir=kept_dir)
    assert {p.name: p.read_bytes() for p in weights_dir.iterdir()} == before
    assert (kept_dir / "checkpoint-aux-2.pt").is_file() and not (kept_dir / "checkpoint-aux-5.pt").exists()


def test_legs_that_are_not_continuations_are_refused(leg, ship):
    run, weights_dir, kept_dir, old = leg
    (kept_dir / "checkpoint-aux-2.card.json").write_text(json.dumps({"steps": 5}))
    with pytest.raises(ship.ShipError, match="not after the kept checkpoint's 5"):
        ship.ship(run, "c", "d", "", weights_dir=weights_dir, kept_dir=kept_dir, eval_report=_report(0.5))
    (kept_dir / "checkpoint-aux-2.card.json").write_text(json.dumps({"steps": 2}))
    (weights_dir / "galip-shapes.json").write_text(json.dumps({**old, "config": {**old["config"], "ngf": 99}}))
    with pytest.raises(ship.ShipError, match="network config differs"):
        ship.ship(run, "c", "d", "", weights_dir=weights_dir, kept_dir=kept_dir, eval_report=_report(0.5))
    (run / "galip.safetensors").unlink()
    assert ship.main([str(run), "--command", "c", "--discriminators", "d"]) == 1
