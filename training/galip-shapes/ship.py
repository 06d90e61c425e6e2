"""Ship a GALIP training leg as the bundled ``galip`` model: weights, card, kept checkpoint, eval.

A leg is a ``studio galip train`` run resumed from the kept checkpoint in this folder (see
README.md) and ended by ``--minutes`` or ``--steps``, so its folder holds ``galip.safetensors``,
``model_card.json`` and ``checkpoint.pt``. Shipping it by hand meant composing the card from
the old card and the run's card (lineage, the history of legs, the recipe, the figures before),
rewriting the weights with that card in their header, stripping the checkpoint's optimizer
states and scoring the result; each step had its own ways to go wrong (sums of seconds, stale
hashes). This script does all of it the same way each time::

    python training/galip-shapes/ship.py runs/galip8 \\
        --command "studio galip train --dataset shapes --out runs/galip8 ... --minutes 140" \\
        --discriminators "resumed from checkpoint-aux-13628.pt, --aux 10.0" \\
        --note "bf16, one thread of a 2-core AMD EPYC with AVX-512 BF16"

What it writes:

* ``studio_galip/weights/galip-shapes.safetensors``: the run's tensors, unchanged, with the
  composed card in the header (``steps`` counts every leg; ``continued_from`` names the weights
  shipped before; ``history`` gains this leg; ``recipe`` gains the command);
* ``studio_galip/weights/galip-shapes.json``: the same card plus the file's sha256 and the
  ``studio eval`` figures (n=256, Frechet distance on 1,000; ``--eval FILE`` reuses a report);
* ``checkpoint-aux-STEP.pt`` here with its ``.card.json``: the run's checkpoint without optimizer
  states (what the next leg resumes from); the one it was resumed from is removed.

The old card's figures move to ``eval_before``, so the card test can check the new weights
against them. What it does not do: the READMEs, the demo grid and the CI floors (the ship
checklist in README.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from studio.api import atomic_path, load_checkpoint, save_safetensors, sha256_file, write_atomic

HERE = Path(__file__).resolve().parent
WEIGHTS_DIR = HERE.parents[1] / "plugins" / "studio-galip" / "studio_galip" / "weights"
#: Run-card entries that describe one run, not the shipped model.
RUN_ONLY = ("weights_sha256", "checkpoint_sha256", "init_g", "clip_file", "eval")
#: Old-card entries that stay as they are: the model's CLIP, vocabulary, drawing rules and licence.
KEPT = ("clip", "draws", "vocabulary", "licence")
JUDGE = "pixels (studio.ml.checker); clip_shape, clip_score and fd from the bundled small CLIP"
LOG_EVERY = 10  # train_galip's metrics interval: a leg's first record is at most this far past its start


class ShipError(Exception):
    """A leg that cannot be shipped as it is; the message says why."""


def kept_checkpoint(folder: Path) -> tuple[Path, int]:
    """The kept checkpoint and its step, read from the file itself (a card can be stale)."""
    found = sorted(folder.glob("checkpoint-aux-*.pt"))
    if len(found) != 1:
        raise ShipError(f"{folder}: expected one kept checkpoint-aux-*.pt, found {len(found)}")
    step = int(load_checkpoint(found[0]).get("step", -1))
    if found[0].name != f"checkpoint-aux-{step}.pt":
        raise ShipError(f"{found[0]}: holds step {step}, not the step its name says")
    return found[0], step


def check_run(run_dir: Path, run: dict, from_step: int, seconds: float | None) -> None:
    """The run folder is one leg from the kept checkpoint, its files the ones its card names."""
    if sha256_file(run_dir / "galip.safetensors") != run["weights_sha256"] or \
            sha256_file(run_dir / "checkpoint.pt") != run["checkpoint_sha256"]:
        raise ShipError(f"{run_dir}: galip.safetensors or checkpoint.pt is not the one model_card.json names "
                        "(a later run in this folder was stopped without finishing)")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first = next((i for i, r in enumerate(records) if r["step"] > from_step), None)
    leg = records[first:] if first is not None else []
    if not leg or leg[0]["step"] > from_step + LOG_EVERY or any(r["step"] <= from_step for r in leg):
        raise ShipError(f"{run_dir}/metrics.jsonl: the run did not start from the kept checkpoint's step {from_step:,}")
    restarts = sum(b["time_s"] < a["time_s"] for a, b in zip(leg, leg[1:]))
    if restarts and seconds is None:
        raise ShipError(f"{run_dir}: the leg was resumed {restarts} time(s), so its card's seconds_this_run covers "
                        "only the last part: give the leg's wall time with --seconds")


def check_clip(run: dict, old: dict) -> None:
    """The leg trained with the CLIP the shipped model names (the card keeps the old ``clip`` entry)."""
    clip_file = Path(run.get("clip_file", ""))
    if run.get("clip_arch") != old["clip"]["arch"] or not clip_file.is_file() or \
            sha256_file(clip_file) != old["clip"]["sha256"]:
        raise ShipError(f"the run's CLIP ({run.get('clip_arch')}, {clip_file}) is not the shipped model's "
                        f"({old['clip']['arch']}, sha256 {old['clip']['sha256'][:12]}...)")


def check_report(report: dict, weights_sha: str, n: int, fd_n: int) -> None:
    """The eval scored the weights being shipped, at the card's sizes, with the bundled CLIP."""
    scored = report.get("generator", {}).get("weights_sha256")
    if scored != weights_sha:
        raise ShipError(f"the eval report scored weights {str(scored)[:12]}..., not the shipped {weights_sha[:12]}...")
    if report.get("n") != n or report["metrics"].get("fd", {}).get("n") != fd_n or report.get("clip") != "bundled":
        raise ShipError(f"the eval report is not n={n} with a Frechet distance on {fd_n} by the bundled CLIP")


def committed_at(path: Path) -> str | None:
    """The commit that holds ``path`` as it is, for the recipe's ``git show``; None outside git or if changed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path.parent, capture_output=True, text=True).stdout.strip()

    try:
        if git("status", "--porcelain", "--", path.name):
            return None
        return git("log", "-1", "--format=%h", "--", path.name) or None
    except OSError:
        return None


def rounded(figures: dict) -> dict:
    """``{name: {value, n}}`` with values to three places, as the cards show them (None: nothing judged)."""
    return {k: {"value": None if v["value"] is None else round(float(v["value"]), 3), "n": int(v["n"])}
            for k, v in figures.items()}


def eval_block(report: dict) -> dict:
    """The card's ``eval`` from a ``studio eval --json`` report."""
    return {
        "judge": JUDGE,
        "seed": report["seed"],
        "prompts": report["prompts"],
        **rounded(report["metrics"]),
        "by_objects": {count: rounded(part) for count, part in report.get("by_objects", {}).items()},
    }


def before_block(old: dict) -> dict:
    """The old card's figures, named by its weights, for ``eval_before``."""
    figures = {k: v for k, v in old["eval"].items() if isinstance(v, dict) and "value" in v}
    return {"weights_sha256": old["weights_sha256"], "seed": old["eval"]["seed"], **rounded(figures)}


def compose_card(old: dict, run: dict, from_step: int, command: str, discriminators: str, note: str,
                 seconds: float | None = None, source: str = "") -> dict:
    """The shipped model's card (without its own sha256 and eval) for a leg run from ``from_step``."""
    leg_steps = int(run["steps"]) - from_step
    if leg_steps <= 0:
        raise ShipError(f"the run ended at step {run['steps']}, not after the kept checkpoint's {from_step}")
    if run.get("config") != old.get("config"):
        raise ShipError("the run's network config differs from the shipped one; this is a new model, not a leg")
    history = list(old.get("history", []))
    leg = len(history) + 1
    seconds = float(run["seconds_this_run"] if seconds is None else seconds)
    card = {k: v for k, v in run.items() if k not in RUN_ONLY}
    card["seconds_this_run"] = round(seconds, 1)
    card["steps"] = int(old["steps"]) + leg_steps
    card.update({k: old[k] for k in KEPT if k in old})
    card["continued_from"] = {
        "weights_sha256": old["weights_sha256"],
        "steps": int(old["steps"]),
        "seconds": round(sum(float(h["seconds"]) for h in history), 1),
        "pixel_weight": old.get("pixel_weight"),
        "aux_weight": old.get("aux_weight"),
        "seconds_note": f"steps and seconds of the earlier legs ({len(history)}) together; "
                        "seconds_this_run is the last leg's",
    }
    entry = {"leg": leg, "steps": leg_steps, "seconds": round(seconds, 1), "discriminators": discriminators}
    if note:
        entry["note"] = note
    if run.get("dataset_options"):
        entry["dataset_options"] = run["dataset_options"]
    card["history"] = history + [entry]
    start = f"{source} && " if source else ""
    card["recipe"] = f"{old['recipe']}; {start}{command} (leg {leg}, from step {from_step:,} to " \
                     f"{int(run['steps']):,} of the run counter)"
    card["eval_before"] = before_block(old)
    card["seconds_note"] = "seconds_this_run is the last leg's wall time only; each leg's is in history"
    return card


def write_weights(run_weights: Path, card: dict, out: Path) -> str:
    """The run's tensors, byte for byte, under a header that carries ``card``; returns the sha256."""
    from safetensors import safe_open

    with safe_open(str(run_weights), framework="pt", device="cpu") as fh:
        header = dict(fh.metadata() or {})
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if header.get("format") is None or "config" not in header:
        raise ShipError(f"{run_weights}: not a Studio GALIP weights file")
    header["meta"] = json.dumps(card)
    save_safetensors(out, tensors, header)
    return sha256_file(out)


def strip_checkpoint(src: Path, dest: Path) -> str:
    """The checkpoint without optimizer states (the next leg's Adam moments start afresh)."""
    state = load_checkpoint(src)
    state["optimizers"] = {}
    torch.save(state, dest)
    return sha256_file(dest)


def run_eval(n: int, fd_n: int) -> dict:
    """``studio eval`` of the bundled model as a user runs it (the file just written is what it loads)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "eval.json"
        subprocess.run([sys.executable, "-m", "studio", "eval", "--model", "galip", "--n", str(n), "--fd",
                        str(fd_n), "--out", str(report)], check=True)
        return json.loads(report.read_text())


def ship(run_dir: Path, command: str, discriminators: str, note: str, *, weights_dir: Path = WEIGHTS_DIR,
         kept_dir: Path = HERE, eval_report: dict | None = None, seconds: float | None = None,
         n: int = 256, fd_n: int = 1000) -> dict:
    """Ship ``run_dir``'s leg; returns the new card.

    Every input is checked before anything is written; the model shipped before comes back if
    the eval fails, and the kept checkpoint is replaced last (a rerun after a failure then finds
    the leg's steps already counted and refuses, instead of counting them twice).
    """
    for name in ("galip.safetensors", "model_card.json", "checkpoint.pt", "metrics.jsonl"):
        if not (run_dir / name).is_file():
            raise ShipError(f"{run_dir}: no {name} (end the leg with --minutes or --steps, not a kill)")
    old_ckpt, from_step = kept_checkpoint(kept_dir)
    old = json.loads((weights_dir / "galip-shapes.json").read_text())
    run = json.loads((run_dir / "model_card.json").read_text())
    check_run(run_dir, run, from_step, seconds)
    check_clip(run, old)
    commit = committed_at(old_ckpt)
    source = (f"mkdir -p {run_dir} && git show {commit}:training/galip-shapes/{old_ckpt.name} > "
              f"{run_dir}/checkpoint.pt") if commit else f"(resumed from {old_ckpt.name})"
    card = compose_card(old, run, from_step, command, discriminators, note, seconds, source)

    new_ckpt = kept_dir / f"checkpoint-aux-{int(run['steps'])}.pt"
    weights, card_path = weights_dir / "galip-shapes.safetensors", weights_dir / "galip-shapes.json"
    before = weights.read_bytes(), card_path.read_bytes()
    with atomic_path(new_ckpt) as stripped:  # renamed into place only if everything below succeeds
        stripped_sha = strip_checkpoint(run_dir / "checkpoint.pt", stripped)
        try:  # the generator checks the file against the card's sha256, so the card goes with it
            shipped_sha = write_weights(run_dir / "galip.safetensors", card, weights)
            final = {**card, "weights_sha256": shipped_sha, "checkpoint_sha256": run["checkpoint_sha256"]}
            write_atomic(card_path, json.dumps(final, indent=2) + "\n")
            report = eval_report if eval_report is not None else run_eval(n, fd_n)
            check_report(report, shipped_sha, n, fd_n)
            final["eval"] = eval_block(report)
            write_atomic(card_path, json.dumps(final, indent=2) + "\n")
        except BaseException:
            write_atomic(weights, before[0])  # the model shipped before stays in place
            write_atomic(card_path, before[1])
            raise
    ckpt_card = {**run, "leg": card["history"][-1], "command": command, "from_step": from_step,
                 "stripped_checkpoint_sha256": stripped_sha, "shipped_weights_sha256": shipped_sha,
                 "eval": final["eval"]}
    write_atomic(new_ckpt.with_suffix(".card.json"), json.dumps(ckpt_card, indent=2) + "\n")
    if old_ckpt != new_ckpt:
        old_ckpt.unlink()
        old_ckpt.with_suffix(".card.json").unlink(missing_ok=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the leg's --out folder")
    parser.add_argument("--command", required=True, help="the leg's training command, for the recipe")
    parser.add_argument("--discriminators", required=True, help="what the leg's discriminators were, for history")
    parser.add_argument("--note", default="", help="hardware and circumstances, for history")
    parser.add_argument("--seconds", type=float, help="the leg's wall time [default: the run card's]")
    parser.add_argument("--eval", dest="eval_file", type=Path, help="a `studio eval --json` report to use")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.eval_file.read_text()) if args.eval_file else None
        card = ship(args.run_dir, args.command, args.discriminators, args.note, eval_report=report,
                    seconds=args.seconds)
    except (ShipError, OSError, KeyError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"ship: {exc}", file=sys.stderr)
        return 1
    ev = card["eval"]
    print(f"shipped {card['steps']:,} steps ({card['weights_sha256'][:12]}): shape {ev['shape']['value']}, "
          f"size {ev['size']['value']}, strays {ev['strays']['value']}, fd {ev.get('fd', {}).get('value')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
