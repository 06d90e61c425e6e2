"""How far is the emoji transformer from drawing a concept, and would a text -> image-embedding prior help?

CLIP-GEN trains its transformer on CLIP *image* embeddings only and samples from the *text*
embedding of the prompt; on emoji the two are far apart (the emoji CLIP's held-out text-picture
cosine is about 0.5). This probe conditions the bundled ``clip-gen-emoji`` transformer three ways
on the same held-out phrasings (``studio eval --dataset emoji``'s prompts and concept matching):

* ``text``: the prompt's text embedding (what the model does);
* ``prior``: a small residual MLP trained here from training captions' text embeddings to their
  pictures' image embeddings (DALL-E 2's prior, deterministic);
* ``oracle``: the image embedding of the asked concept's own picture (a perfect prior's output
  for that picture; a reference, not a bound).

If ``oracle`` is low, the transformer is the limit and a prior cannot help yet. Only the
condition changes: with ``--candidates`` > 1 the candidates are still ranked against the prompt's
text, as the model does. Usage (after
``python -m studio.ml.emoji fetch`` and ``build --size 64``)::

    python training/clip-gen-emoji/prior_probe.py --n 64 --candidates 1 [--params '{"temperature": 0.5}']
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

from studio.generators import Request
from studio.loader import generators
from studio.ml.emoji import build
from studio.ml.evaluate_emoji import build_reference, concept_accuracy, dataset_pictures, eval_prompts, target_pictures, to_unit_tensor
from studio.plugins import get_registry
from studio_clip_gen.clip_embed import encode_images, encode_text


class Prior(nn.Module):
    """Unit text embedding -> unit image embedding, as a residual on the input."""

    def __init__(self, dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        return F.normalize(x + self.net(x), dim=-1)


@torch.no_grad()
def training_pairs(data, clip) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(text embedding of every training caption, unit image embedding of its picture, the picture's index)."""
    pictures = [encode_images(clip, dataset_pictures(data, list(range(s, min(s + 256, len(data))))) * 2 - 1)
                for s in range(0, len(data), 256)]
    images = F.normalize(torch.cat(pictures), dim=-1)
    captions, rows = [], []
    for i in range(len(data)):
        for caption in data.train_captions(i):
            captions.append(caption)
            rows.append(i)
    texts = torch.cat([encode_text(clip, captions[s : s + 512]) for s in range(0, len(captions), 512)])
    return texts, images[rows], torch.tensor(rows)


def train_prior(texts: torch.Tensor, images: torch.Tensor, pictures: torch.Tensor, epochs: int) -> Prior:
    """The prior, trained on the captions of all but 300 pictures; the held-back pictures' captions
    show how it does on pictures it never saw (a picture has several captions)."""
    prior = Prior(texts.shape[1])
    opt = torch.optim.AdamW(prior.parameters(), 1e-3, weight_decay=1e-4)
    held_back = torch.isin(pictures, torch.randperm(int(pictures.max()) + 1)[:300])
    val, train = held_back.nonzero().squeeze(1), (~held_back).nonzero().squeeze(1)
    for epoch in range(epochs):
        shuffled = train[torch.randperm(len(train))]
        for s in range(0, len(shuffled), 256):
            batch = shuffled[s : s + 256]
            loss = 1 - (prior(texts[batch]) * images[batch]).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            print(f"epoch {epoch + 1}: held-back pictures' caption cosine {float((prior(texts[val]) * images[val]).sum(-1).mean()):.3f}",
                  flush=True)
    return prior.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="held-out prompts")
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--params", default="{}", help="other generation parameters (JSON)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--model", default="clip-gen-emoji")
    args = parser.parse_args()
    torch.manual_seed(0)

    data = build()
    spec = get_registry(None).model(args.model)
    generator = generators.get(spec, "cpu")
    clip = generator.clip
    prior = train_prior(*training_pairs(data, clip), epochs=args.epochs)

    prompts = eval_prompts(data, args.n, 0)
    with torch.no_grad():
        texts = encode_text(clip, [p["caption"] for p in prompts])
        targets = F.normalize(encode_images(clip, target_pictures(data, prompts) * 2 - 1), dim=-1)
        predicted = prior(texts)
    print(f"held-out cosine to the asked picture: text {float((F.normalize(texts, dim=-1) * targets).sum(-1).mean()):.3f}, "
          f"prior {float((predicted * targets).sum(-1).mean()):.3f}")
    reference = build_reference(data, clip)
    params = spec.validate_params({"candidates": args.candidates, **json.loads(args.params)})
    text_embedding = generator._text_embedding
    rows = {}
    try:
        for name, conditions in (("text", [text_embedding(p["caption"]) for p in prompts]), ("prior", list(predicted)),
                                 ("oracle", list(targets))):
            images = []
            for k, prompt in enumerate(prompts):  # the transformer samples from this condition instead of the text's
                generator._text_embedding = lambda _prompt, c=conditions[k]: c.float()
                request = Request(prompt["caption"], k, dict(params), index=0)
                images.extend(r.image for r in generator.generate([request], lambda _d, _t: None))
            metrics = concept_accuracy(to_unit_tensor(images, data.size), [p["concept"] for p in prompts], reference, clip)
            rows[name] = {k: round(v["value"], 3) for k, v in metrics.items()}
            print(name, rows[name], flush=True)
    finally:
        generator._text_embedding = text_embedding
    print(json.dumps({"n": len(prompts), "params": params, "results": rows}))


if __name__ == "__main__":
    main()
