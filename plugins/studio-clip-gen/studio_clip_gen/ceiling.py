"""How well a VQGAN can draw at best: the pixel judge on its reconstructions of held-out scenes.

The transformer only chooses codes; every image CLIP-GEN makes is the decoding of some code
grid. So the pixel judge's figures on a VQGAN's reconstructions (encode, then decode) of the
``shapes`` dataset's own drawings bound what any transformer over that VQGAN can reach, however
long it trains: a VQGAN whose reconstructions keep half the shapes caps CLIP-GEN's shape figure
near one half. ``studio clip-gen train vqgan`` records this ceiling in its run card and
``studio clip-gen judge-vqgan`` measures any VQGAN file, so a VQGAN is judged before a
transformer is trained on it.
"""

from __future__ import annotations

from typing import Callable

#: The judge's figures, in the order people read them (``blank`` and ``strays``: lower is better).
FIGURES = ("colour", "shape", "relation", "size", "background", "blank", "strays")


def reconstruction_scores(reconstruct: Callable, n: int = 256, canvas: int = 64, batch: int = 32) -> dict[str, float | None]:
    """The pixel judge on ``reconstruct(images)`` for ``n`` held-out scenes of the ``shapes`` grammar.

    ``reconstruct`` maps a float batch ``[B, 3, canvas, canvas]`` in [-1, 1] to another; the
    scenes are the ones ``studio eval`` prompts for (whole grammar, both backgrounds).
    """
    import numpy as np
    import torch
    from PIL import Image

    from studio.ml import checker, shapes

    prompts = shapes.eval_prompts(n, phrasing="grammar", canvas=canvas)
    originals = [shapes.render_attrs(p.attrs, canvas=canvas).convert("RGB") for p in prompts]
    images = []
    for start in range(0, n, batch):
        chunk = originals[start : start + batch]
        x = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in chunk]).float() / 127.5 - 1
        with torch.no_grad():
            y = reconstruct(x).clamp(-1, 1)
        pixels = ((y + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        images += [Image.fromarray(a) for a in pixels]
    scores = checker.score_images(images, [p.attrs for p in prompts])
    # a figure no scene asks for (no two-object scene among a handful) is None, not NaN
    return {name: None if (v := scores[name]["value"]) is None else round(v, 4) for name in FIGURES}


def vqgan_ceiling(vqgan, n: int = 256) -> dict[str, float | None]:
    """:func:`reconstruction_scores` of a :class:`~studio_clip_gen.vqgan.VQModel` at its resolution."""
    vqgan = vqgan.eval()
    return reconstruction_scores(lambda x: vqgan.decode_indices(vqgan.encode_to_indices(x)), n=n,
                                 canvas=vqgan.config.resolution)


def ceiling_line(scores: dict[str, float | None]) -> str:
    return ", ".join(f"{name} {scores[name]:.3f}" for name in FIGURES if scores.get(name) is not None)
