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


def _report(shape: float, weights_sha: str, n: int = 256, fd_n: int = 1000) -> dict:
    """A `studio eval --json` report of ``weights_sha`` (as the eval of the file just written gives)."""
    figures = {"shape": {"value": shape, "n": n}, "size": {"value": 0.75, "n": n}, "strays": {"value": 0.0, "n": n},
               "relation": {"value": None, "n": 0}, "fd": {"value": 1.23456, "n": fd_n}}
    return {"model": "galip", "generator": {"weights_sha256": weights_sha}, "clip": "bundled", "n": n, "seed": 0,
            "prompts": "shapes eval split, whole grammar", "metrics": figures,
            "by_objects": {"1": {"shape": {"value": 1.0, "n": 2}}, "2": {"shape": {"value": 1 / 3, "n": 2}}}}


@pytest.fixture
def leg(tmp_path, ship, monkeypatch):
    """A shipped model (two earlier legs, kept checkpoint at step 2) and a leg resumed from it to step 5.

    ``run_eval`` scores whatever file is shipped at the moment, as `studio eval` of the installed model does.
    """
    clip = make_tiny_clip()
    clip_file = tmp_path / "clip.safetensors"
    clip_file.write_bytes(b"the CLIP the model was trained with")
    meta = {"dataset": "toy", "clip_arch": "tiny", "clip_file": str(clip_file)}
    cfg = default_config(clip, ngf=8, code_ch=16, mid_ch=8, d_ch=32, c_hidden=16)
    first = tmp_path / "first"
    run_card = train_galip(first, ToyColours(), clip, config=cfg, steps=2, batch_size=4, show_progress=False,
                           meta=meta)
    weights_dir, kept_dir = tmp_path / "weights", tmp_path / "kept"
    weights_dir.mkdir(), kept_dir.mkdir()
    shutil.copy(first / "galip.safetensors", weights_dir / "galip-shapes.safetensors")
    old = {**{k: v for k, v in run_card.items() if k not in ("checkpoint_sha256", "clip_file")}, "steps": 9,
           "weights_sha256": sha256_file(weights_dir / "galip-shapes.safetensors"),
           "clip": {"arch": "tiny", "sha256": sha256_file(clip_file)}, "vocabulary": ["red", "square"],
           "licence": "Apache-2.0", "recipe": "leg one; leg two",
           "history": [{"leg": 1, "steps": 7, "seconds": 100.0}, {"leg": 2, "steps": 2, "seconds": 20.5}],
           "eval": {"judge": "pixels", "prompts": "p", "seed": 0, **_report(0.25, "")["metrics"]}}
    (weights_dir / "galip-shapes.json").write_text(json.dumps(old))
    shutil.copy(first / "checkpoint.pt", kept_dir / "checkpoint-aux-2.pt")
    (kept_dir / "checkpoint-aux-2.card.json").write_text(json.dumps({"steps": 2}))
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(first / "checkpoint.pt", run / "checkpoint.pt")
    train_galip(run, ToyColours(), clip, steps=5, batch_size=4, show_progress=False, log_every=1, meta=meta)
    monkeypatch.setattr(ship, "run_eval",
                        lambda n, fd_n: _report(0.5, sha256_file(weights_dir / "galip-shapes.safetensors"), n, fd_n))
    return run, weights_dir, kept_dir, old, clip, meta


def _tensors(path):
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads(fh.metadata()["meta"])


def _files(*folders: Path) -> dict[str, bytes]:
    return {f"{p.parent.name}/{p.name}": p.read_bytes() for folder in folders for p in sorted(folder.iterdir())}


def test_a_leg_ships_with_its_lineage_figures_and_stripped_checkpoint(leg, ship):
    run, weights_dir, kept_dir, old, _, _ = leg
    card = ship.ship(run, "train --minutes 9", "resumed", "one thread", weights_dir=weights_dir, kept_dir=kept_dir)
    shipped = weights_dir / "galip-shapes.safetensors"
    assert card["weights_sha256"] == sha256_file(shipped)
    assert json.loads((weights_dir / "galip-shapes.json").read_text()) == card
    tensors, meta = _tensors(shipped)
    run_tensors, _ = _tensors(run / "galip.safetensors")
    assert tensors.keys() == run_tensors.keys() and all(torch.equal(tensors[k], run_tensors[k]) for k in tensors)
    assert meta == {k: v for k, v in card.items() if k not in ("weights_sha256", "checkpoint_sha256", "eval")}
    assert card["steps"] == 9 + 3
    assert card["history"][-1] == {"leg": 3, "steps": 3, "seconds": json.loads(
        (run / "model_card.json").read_text())["seconds_this_run"], "discriminators": "resumed", "note": "one thread"}
    assert card["continued_from"]["weights_sha256"] == old["weights_sha256"]
    assert card["continued_from"]["seconds"] == 120.5 and card["continued_from"]["steps"] == 9
    assert card["recipe"] == "leg one; leg two; (resumed from checkpoint-aux-2.pt) && train --minutes 9 " \
                             "(leg 3, from step 2 to 5 of the run counter)"
    assert card["vocabulary"] == old["vocabulary"] and card["clip"] == old["clip"]
    assert "init_g" not in card and "clip_file" not in card
    assert card["eval_before"]["shape"] == {"value": 0.25, "n": 256}
    assert card["eval_before"]["weights_sha256"] == old["weights_sha256"]
    assert card["eval"]["shape"]["value"] == 0.5 and card["eval"]["fd"] == {"value": 1.235, "n": 1000}
    assert card["eval"]["by_objects"]["2"]["shape"]["value"] == 0.333 and card["eval"]["relation"]["value"] is None
    assert sorted(p.name for p in kept_dir.iterdir()) == ["checkpoint-aux-5.card.json", "checkpoint-aux-5.pt"]
    kept = read_official(kept_dir / "checkpoint-aux-5.pt")
    assert kept.extra["step"] == 5 and kept.extra["optimizers"] == {}
    resumed_from = read_official(run / "checkpoint.pt")
    assert all(torch.equal(kept.states["netG"][k], v) for k, v in resumed_from.states["netG"].items())
    ckpt_card = json.loads((kept_dir / "checkpoint-aux-5.card.json").read_text())
    assert ckpt_card["shipped_weights_sha256"] == card["weights_sha256"]
    assert ckpt_card["stripped_checkpoint_sha256"] == sha256_file(kept_dir / "checkpoint-aux-5.pt")
    with pytest.raises(ship.ShipError, match="did not start from the kept checkpoint's step 5"):
        ship.ship(run, "c", "d", "", weights_dir=weights_dir, kept_dir=kept_dir)  # shipping twice counts nothing twice


def test_a_failed_eval_or_checkpoint_leaves_everything_as_it_was(leg, ship, monkeypatch):
    run, weights_dir, kept_dir, _, _, _ = leg
    before = _files(weights_dir, kept_dir)

    def broken(*_args):
        raise RuntimeError("died")

    for name in ("run_eval", "strip_checkpoint"):
        with monkeypatch.context() as patch:
            patch.setattr(ship, name, broken)
            with pytest.raises(RuntimeError, match="died"):
                ship.ship(run, "c", "d", "", weights_dir=weights_dir, kept_dir=kept_dir)
        assert _files(weights_dir, kept_dir) == before, name
    monkeypatch.setattr(ship, "run_eval", lambda n, fd_n: _report(0.5, "f" * 64, n, fd_n))  # some other weights
    with pytest.raises(ship.ShipError, match="scored weights ffffffffffff"):
        ship.ship(run, "c", "d", "", weights_dir=weights_dir, kept_dir=kept_dir)
    assert _files(weights_dir, kept_dir) == before


def test_legs_that_are_not_one_run_from_the_kept_checkpoint_are_refused(leg, ship, tmp_path):
    run, weights_dir, kept_dir, old, clip, meta = leg
    kwargs = {"weights_dir": weights_dir, "kept_dir": kept_dir}
    (kept_dir / "checkpoint-aux-2.pt").rename(kept_dir / "checkpoint-aux-3.pt")
    with pytest.raises(ship.ShipError, match="holds step 2, not the step its name says"):
        ship.ship(run, "c", "d", "", **kwargs)
    (kept_dir / "checkpoint-aux-3.pt").rename(kept_dir / "checkpoint-aux-2.pt")

    (weights_dir / "galip-shapes.json").write_text(json.dumps({**old, "config": {**old["config"], "ngf": 99}}))
    with pytest.raises(ship.ShipError, match="network config differs"):
        ship.ship(run, "c", "d", "", **kwargs)
    (weights_dir / "galip-shapes.json").write_text(json.dumps({**old, "clip": {**old["clip"], "sha256": "0" * 64}}))
    with pytest.raises(ship.ShipError, match="not the shipped model's"):
        ship.ship(run, "c", "d", "", **kwargs)
    (weights_dir / "galip-shapes.json").write_text(json.dumps(old))

    saved = (run / "checkpoint.pt").read_bytes()
    shutil.copy(kept_dir / "checkpoint-aux-2.pt", run / "checkpoint.pt")  # a later run stopped by a kill
    with pytest.raises(ship.ShipError, match="not the one model_card.json names"):
        ship.ship(run, "c", "d", "", **kwargs)
    (run / "checkpoint.pt").write_bytes(saved)

    train_galip(run, ToyColours(), clip, steps=6, batch_size=4, show_progress=False, log_every=1, meta=meta)
    with pytest.raises(ship.ShipError, match="resumed 1 time"):  # its card's seconds cover the last part only
        ship.ship(run, "c", "d", "", **kwargs)
    card = ship.ship(run, "c", "d", "", seconds=42.0, **kwargs)
    assert card["history"][-1]["steps"] == 4 and card["history"][-1]["seconds"] == 42.0

    (run / "galip.safetensors").unlink()
    assert ship.main([str(run), "--command", "c", "--discriminators", "d"]) == 1
