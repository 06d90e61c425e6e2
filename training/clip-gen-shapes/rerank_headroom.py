"""How much a better re-ranking CLIP could gain, judged by pixels.

Draws ``--n`` held-out `shapes` prompts (the `studio eval` list, seeds ``i``) with every
candidate of the default kept (``candidates=8, keep=8``), judges each candidate with the pixel
judge, and reports, per re-ranking CLIP given with ``--clip``, the share of prompts whose
chosen candidate is right (shape, size and relation where the prompt asks them; everything
asked), next to a random choice and the best any re-ranker could do (some candidate right). Candidates are cached in ``--cache`` per model
folder, count and guidance, so several CLIPs are compared on the very same candidates. They are
scored here as the PNGs that were stored (8-bit), where the generator scores its float decodes:
a CLIP's choice here can differ from the generator's when two scores are within rounding.

    python training/clip-gen-shapes/rerank_headroom.py MODEL_FOLDER --n 256 \
        --clip studio/ml/weights/clip-small.safetensors --clip runs/judge.safetensors

With ``--claims FILE`` the claims classifier is compared too: alone, and added to the last CLIP's
score times each ``--clip-weight`` (always 1, and the folder's own weight: how the generator ranks
when the last ``--clip`` and ``--claims`` are the folder's own files). ``--start 256 --n 128``
measures on prompts no earlier choice was made on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studio.generators import Request
from studio.ml import shapes
from studio.ml.checker import check_image
from studio.ml.clip_load import load_bundled_clip
from studio_clip_gen.clip_embed import encode_images, encode_text
from studio_clip_gen.generator import ClipGenGenerator, rank_scores
from studio_clip_gen.model_dir import checked_clip_weight, claims_clip_weight, read_manifest

K = 8


def candidates(folder: Path, n: int, cache: Path, guidance: float, start: int = 0) -> list[tuple[dict, list[Image.Image]]]:
    cache.mkdir(parents=True, exist_ok=True)
    prompts = shapes.eval_prompts(start + n, seed=0, phrasing="grammar")
    generator = None
    out = []
    for i, p in enumerate(prompts[start:], start):
        path = cache / f"{i:04d}.png"
        if not path.is_file():
            if generator is None:
                generator = ClipGenGenerator("clip-gen", folder)
                generator.load("cpu")
            params = {"candidates": K, "keep": K, "guidance": guidance}
            (result,) = generator.generate([Request(p.text, i, params, index=i)], lambda d, t: None)
            result.image.save(path)
        grid = Image.open(path).convert("RGB")
        side = grid.size[1]
        out.append(({"text": p.text, "attrs": p.attrs}, [grid.crop((k * side, 0, (k + 1) * side, side)) for k in range(K)]))
    return out


def verdicts(prompt: dict, tiles: list[Image.Image]) -> list[dict]:
    rows = []
    for tile in tiles:
        c = check_image(tile, prompt["attrs"])
        asked = (c.colour_ok, c.shape_ok, c.relation_ok, c.size_ok, c.background_ok)
        rows.append({"shape": bool(c.shape_ok), "size": c.size_ok, "relation": c.relation_ok,
                     "all": all(v in (None, True) for v in asked) and not c.blank})
    return rows


KEYS = ("shape", "size", "relation", "all")


def share(values) -> float:
    """The share of True among the prompts that ask (None: the prompt does not ask it; None
    when no prompt asks, so --json stays strict JSON)."""
    asked = [bool(v) for v in values if v is not None]
    return float(np.mean(asked)) if asked else None


def fmt(value: float | None, width: int, digits: int = 3) -> str:
    """A share for the table; a dash where no prompt asks it."""
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.{digits}f}"


def any_right(column: list) -> bool | None:
    return None if column[0] is None else any(column)


def _pixels(tiles: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(t)).permute(2, 0, 1).float() / 127.5 - 1 for t in tiles])


def clip_scores(clip_file: str, data) -> list[torch.Tensor]:
    clip = load_bundled_clip(clip_file, device="cpu")
    with torch.no_grad():
        return [encode_images(clip, _pixels(tiles)) @ encode_text(clip, [prompt["text"]])[0] for prompt, tiles in data]


def claims_scores(claims_file: str, data) -> list[torch.Tensor | None]:
    """The claims classifier's score of every candidate; None for a prompt it cannot parse."""
    from studio.ml.claims import caption_score, load_claims_net

    net = load_claims_net(claims_file)
    out = []
    with torch.no_grad():
        for prompt, tiles in data:
            caption = shapes.parse_caption(prompt["text"])
            out.append(None if caption is None else caption_score(net, _pixels(tiles), caption))
    return out


def picks(scores: list[torch.Tensor]) -> list[int]:
    return [int(s.argmax()) for s in scores]


def rates(judged, scores: list[torch.Tensor]) -> dict:
    """The share of prompts whose top-scored candidate is right, for each of :data:`KEYS`."""
    chosen = picks(scores)
    return {k: share([j[c][k] for j, c in zip(judged, chosen)]) for k in KEYS}


def weight(text: str) -> float:
    """An argparse type: a weight as a model folder may hold it (a finite number >= 0)."""
    try:
        return checked_clip_weight(float(text), text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def groups(data) -> dict[str, list]:
    """Per prompt, what it asks: the shape (one-object prompts), the sizes, how many objects, the background."""
    out: dict[str, list] = {"shape": [], "size": [], "objects": [], "background": []}
    for prompt, _tiles in data:
        attrs = prompt["attrs"]
        first = attrs["objects"][0]
        out["shape"].append(first["shape"] if len(attrs["objects"]) == 1 else None)
        sizes = "+".join(sorted(o["size"] for o in attrs["objects"]))  # "large+small": a pair told apart by size
        out["size"].append(sizes if attrs["asked"]["sizes"] else "not asked")
        out["objects"].append(len(attrs["objects"]))
        out["background"].append(attrs["background"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--start", type=int, default=0,
                        help="the first `studio eval` prompt (e.g. 256: prompts no earlier choice was made on)")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--clip", action="append", required=True, help="a re-ranking CLIP (Studio's small-CLIP file)")
    parser.add_argument("--cache", type=Path, help="candidate grids [default: FOLDER-candidates-nN-gGUIDANCE]")
    parser.add_argument("--claims", help="a claims classifier (train_claims.py) to compare, alone and with the "
                                          "last --clip; --by then breaks its picks down")
    parser.add_argument("--clip-weight", type=weight, action="append", default=[],
                        help="with --claims, also rank by the claims score plus this times the last --clip's "
                             "(repeatable) [always: 1, and the folder's own weight]")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--by", action="store_true",
                        help="also break shape down by what each prompt asks, for the last --clip: the shape "
                             "(one-object prompts), the sizes asked, objects, background")
    args = parser.parse_args()
    cache = args.cache or args.folder.with_name(f"{args.folder.name}-candidates-n{args.n}-g{args.guidance:g}")
    data = candidates(args.folder, args.n, cache, args.guidance, args.start)
    judged = [verdicts(p, tiles) for p, tiles in data]
    report = {"start": args.start, "n": len(data), "candidates": K,
              "random": {k: share([v for j in judged for v in (c[k] for c in j)]) for k in KEYS},
              "best possible": {k: share([any_right([c[k] for c in j]) for j in judged]) for k in KEYS}}
    chosen = []
    for clip_file in args.clip:
        by_clip = clip_scores(clip_file, data)
        chosen = picks(by_clip)
        report[clip_file] = rates(judged, by_clip)
    if args.claims:
        by_claims = claims_scores(args.claims, data)
        unparsed = sum(s is None for s in by_claims)
        own = claims_clip_weight(read_manifest(args.folder))
        report[f"claims {Path(args.claims).name}"] = rates(judged, [c if c is not None else k
                                                                   for c, k in zip(by_claims, by_clip)])
        for w in sorted({1.0, own, *args.clip_weight}):
            scores = [torch.tensor(rank_scores(list(zip(k.tolist(), c.tolist() if c is not None else [None] * len(k))), w))
                      for c, k in zip(by_claims, by_clip)]
            report[f"claims + {w!r} x CLIP{' (the folder weight)' if w == own else ''}"] = rates(judged, scores)
            if w == own:
                chosen = picks(scores)
        report["prompts the claims classifier cannot parse"] = unparsed
    print(f"{'re-ranker':60s} {'shape':>6s} {'size':>6s} {'relation':>8s} {'all asked':>9s}   "
          f"(prompts {args.start}-{args.start + len(data) - 1}, {K} candidates)")
    for name, row in report.items():
        if isinstance(row, dict):
            print(f"{name:60s} {fmt(row['shape'], 6)} {fmt(row['size'], 6)} {fmt(row['relation'], 8)} {fmt(row['all'], 9)}")
    if args.by:  # `chosen`: the generator's picks with --claims, else the last CLIP's
        picker = "the folder's rank_scores" if args.claims else Path(args.clip[-1]).name
        print(f"\nshape by group: random / {picker} / best possible")
        for name, group in groups(data).items():
            idx = [i for i, g in enumerate(group) if g is not None]
            for value in sorted({group[i] for i in idx}):
                rows = [i for i in idx if group[i] == value]
                print(f"  {name}={value!s:11s} n={len(rows):3d}  "
                      f"{fmt(share([c['shape'] for i in rows for c in judged[i]]), 0, 2)} / "
                      f"{fmt(share([judged[i][chosen[i]]['shape'] for i in rows]), 0, 2)} / "
                      f"{fmt(share([any(c['shape'] for c in judged[i]) for i in rows]), 0, 2)}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
