"""Zero-shot evaluation of a CLIP on held-out ``shapes`` scenes, from text prompts only.

For each held-out image the candidates differ in exactly one thing, so each number measures
one skill:

* ``colour``: single-object images, "a {c} {true shape}" for the 8 colours (chance 1/8);
* ``shape``: single-object images, "a {true colour} {s}" for the 4 shapes (chance 1/4);
* ``relation``: two-object images, "A {r} B" for the 4 relations with the true objects
  (chance 1/4);
* ``order``: two-object images, "A {true r} B" against "B {true r} A" (chance 1/2): does the
  model know which object is where, not only that the scene is horizontal or vertical.

``relation_cosine`` is the cheap early check: the mean cosine between the text embeddings of
"A left of B" and "A right of B" (and above/below). An untrained-for-order encoder gives
0.998-1.0; a model that can follow relations must bring it clearly below that.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from studio.ml import shapes
from studio.ml.datasets import ImageTransform

EVAL_SEED = shapes.EVAL_SEED


def _default_text_encoder(model, tokens: torch.Tensor) -> torch.Tensor:
    return model.encode_text(tokens, normalize=True)


def _tokenizer(model):
    import open_clip

    return lambda texts: open_clip.tokenize(list(texts), context_length=model.context_length)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_texts(model, texts: list[str], text_encoder: Callable | None = None, chunk: int = 512) -> torch.Tensor:
    """Unit-norm text embeddings ``[len(texts), D]``."""
    encode = text_encoder or _default_text_encoder
    tok = _tokenizer(model)
    out = [encode(model, tok(texts[i:i + chunk]).to(_device(model))).float() for i in range(0, len(texts), chunk)]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def embed_images(model, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Unit-norm image embeddings of images in [-1, 1] ``[B,3,H,W]``."""
    from studio.ml.clip_features import to_clip_input

    dtype = next(model.parameters()).dtype
    out = []
    for i in range(0, len(images), chunk):
        x = to_clip_input(images[i:i + chunk].to(_device(model), dtype), model, mapping="clean")
        out.append(model.encode_image(x, normalize=True).float())
    return F.normalize(torch.cat(out), dim=-1)


def heldout_scenes(n: int, two_objects: bool, seed: int = EVAL_SEED, canvas: int = 64) -> list[shapes.Scene]:
    """``n`` scenes of the eval split with one or two objects (never seen in training)."""
    source = shapes.ShapesSource(seed=seed, split="eval", canvas=canvas, two_object_share=1.0 if two_objects else 0.0)
    return [source.scene(i) for i in range(n)]


def _images(scenes: list[shapes.Scene], size: int) -> torch.Tensor:
    transform = ImageTransform(size)
    return torch.stack([transform(shapes.render_scene(s)) for s in scenes])


def _choice_accuracy(img: torch.Tensor, candidates: list[list[str]], text_emb: dict[str, torch.Tensor]) -> float:
    """Share of images whose first candidate scores highest among its candidates."""
    correct = 0
    for i, texts in enumerate(candidates):
        sims = torch.stack([text_emb[t] for t in texts]) @ img[i]
        correct += int(int(sims.argmax()) == 0)
    return correct / max(1, len(candidates))


def _np(o) -> str:
    return shapes.noun_phrase(o.colour, o.shape)


@torch.no_grad()
def evaluate_zero_shot(model, n: int = 256, seed: int = EVAL_SEED, text_encoder: Callable | None = None) -> dict:
    """Colour, shape, relation and order accuracy (0..1) on ``n`` held-out images each.

    ``score`` is the mean of the four, used to keep the best checkpoint.
    """
    from studio.ml.clip_features import clip_image_size

    was_training = model.training
    model.eval()
    size = clip_image_size(model)
    singles = heldout_scenes(n, two_objects=False, seed=seed, canvas=size)
    pairs = heldout_scenes(n, two_objects=True, seed=seed, canvas=size)
    colour_c, shape_c, rel_c, order_c = [], [], [], []
    for s in singles:
        (o,) = s.objects
        colour_c.append([shapes.noun_phrase(c, o.shape) for c in [o.colour] + [c for c in shapes.COLOURS if c != o.colour]])
        shape_c.append([shapes.noun_phrase(o.colour, x) for x in [o.shape] + [x for x in shapes.SHAPES if x != o.shape]])
    for s in pairs:
        a, b = s.objects
        rels = [s.relation] + [r for r in shapes.RELATIONS if r != s.relation]
        rel_c.append([f"{_np(a)} {shapes.RELATION_PHRASES[r][0]} {_np(b)}" for r in rels])
        order_c.append([rel_c[-1][0], f"{_np(b)} {shapes.RELATION_PHRASES[s.relation][0]} {_np(a)}"])
    texts = list(dict.fromkeys(t for group in (colour_c, shape_c, rel_c, order_c) for c in group for t in c))
    emb = dict(zip(texts, embed_texts(model, texts, text_encoder)))
    img_single = embed_images(model, _images(singles, size))
    img_pair = embed_images(model, _images(pairs, size))
    result = {
        "colour": _choice_accuracy(img_single, colour_c, emb),
        "shape": _choice_accuracy(img_single, shape_c, emb),
        "relation": _choice_accuracy(img_pair, rel_c, emb),
        "order": _choice_accuracy(img_pair, order_c, emb),
    }
    result["score"] = float(np.mean(list(result.values())))
    result.update(relation_cosines(model, text_encoder=text_encoder))
    result["n"] = n
    model.train(was_training)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}


@torch.no_grad()
def relation_cosines(model, pairs: int = 32, seed: int = EVAL_SEED, text_encoder: Callable | None = None) -> dict:
    """Mean text-embedding cosine of "A left of B" vs "A right of B" (and "A above B" vs
    "A below B"), and of "A left of B" vs "B left of A". Near 1.0: the encoder ignores order."""
    rng = np.random.default_rng([99, seed])
    flip_pairs, swap_pairs = [], []
    for _ in range(pairs):
        ca, cb = rng.choice(shapes.COLOURS, 2, replace=False)
        sa, sb = rng.choice(shapes.SHAPES, 2)
        a, b = shapes.noun_phrase(ca, sa), shapes.noun_phrase(cb, sb)
        flip_pairs += [(f"{a} to the left of {b}", f"{a} to the right of {b}"), (f"{a} above {b}", f"{a} below {b}")]
        swap_pairs.append((f"{a} to the left of {b}", f"{b} to the left of {a}"))
    texts = list(dict.fromkeys(t for p in flip_pairs + swap_pairs for t in p))
    emb = dict(zip(texts, embed_texts(model, texts, text_encoder)))

    def mean_cos(ps):
        return float(np.mean([float(emb[x] @ emb[y]) for x, y in ps]))

    return {"cos_flip": round(mean_cos(flip_pairs), 4), "cos_swap": round(mean_cos(swap_pairs), 4)}
