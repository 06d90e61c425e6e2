"""A small pixel classifier of what a `shapes` picture holds, for re-ranking candidates.

The small CLIPs accept a soft blob as any shape: asked to choose among a generator's candidates,
they pick the right shape little more often than chance. This network reads the pixels and
answers the questions a `shapes` caption asks of them, one sigmoid per
:data:`studio.ml.shapes.CLAIM_CLASSES` entry: is there a red circle, a blue square, a small
green object. A candidate's score for a prompt is the mean log-likelihood of the prompt's
decided entries (:func:`claim_score`): the pairs it names present, every other pair absent.

It is trained on the dataset's own drawings (optionally passed through a VQGAN first, so it
reads them in the rendering a generator's candidates have); it knows only the `shapes` grammar,
and :func:`studio.ml.shapes.parse_caption` tells which prompts it can score.
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
from torch import nn

from studio.ml.shapes import CLAIM_CLASSES, CLAIM_INDEX, Caption, claim_targets

FORMAT = "studio-claims-1"


class ClaimsNet(nn.Module):
    """Convolutions down to an eighth of the picture's side, a logit per claim class at every
    place, pooled by a log-mean-exp (a soft maximum: each claim is about one object, which sits
    somewhere): a pair is read where its object is, so two objects' colours do not mix."""

    def __init__(self, image_size: int = 64, ch: int = 32) -> None:
        super().__init__()
        layers, c_in, size = [], 3, image_size
        while size > max(image_size // 8, 1):
            layers += [nn.Conv2d(c_in, ch, 3, 2, 1), nn.GroupNorm(8, ch), nn.SiLU(),
                       nn.Conv2d(ch, ch, 3, 1, 1), nn.GroupNorm(8, ch), nn.SiLU()]
            c_in, size = ch, size // 2
        self.convs = nn.Sequential(*layers)
        self.head = nn.Conv2d(c_in, len(CLAIM_CLASSES), 1)
        self.image_size, self.ch = image_size, ch

    def maps(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` [B,3,H,W] in [-1, 1] -> logits per place [B, len(CLAIM_CLASSES), H/8, W/8]."""
        return self.head(self.convs(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` [B,3,H,W] in [-1, 1] -> logits [B, len(CLAIM_CLASSES)]."""
        return pooled(self.maps(images))


def pooled(maps: torch.Tensor) -> torch.Tensor:
    logits = maps.flatten(2)
    return torch.logsumexp(logits, dim=2) - math.log(logits.shape[2])


#: Positive entries are rare (one to four of 48): weighted up in training so a classifier does
#: not settle on "nothing is there" (measured: without it, nothing but base rates in 400 steps).
POS_WEIGHT = 20.0


def training_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with the positives weighted by :data:`POS_WEIGHT`, averaged over the
    entries ``mask`` marks as decided (all of them without a mask)."""
    weight = torch.full((logits.shape[1],), POS_WEIGHT, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight, reduction="none")
    if mask is None:
        return loss.mean()
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def caption_targets(caption: Caption) -> tuple[torch.Tensor, torch.Tensor]:
    targets, mask = claim_targets(caption.objects)
    return torch.from_numpy(targets), torch.from_numpy(mask)


def claim_score(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image, the mean log-likelihood of the decided entries (higher: a better match)."""
    ll = -F.binary_cross_entropy_with_logits(logits.float(), targets.expand_as(logits), reduction="none")
    mask = mask.expand_as(logits)
    return (ll * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


#: Per relation: the axis (0: down, 1: right) and the sign of A's place minus B's when it holds.
RELATION_AXES = {"left of": (1, -1.0), "right of": (1, 1.0), "above": (0, -1.0), "below": (0, 1.0)}


def relation_loglik(maps: torch.Tensor, caption: Caption) -> torch.Tensor:
    """Per image, how well the places of the caption's two objects fit its relation.

    Each object is where its (colour, shape) map is strongest (a soft arg-max over the places);
    the log-sigmoid of their gap along the relation's axis, in places, is near 0 when the relation
    holds by a clear margin and falls as it fails. Zero for a caption without a relation.
    """
    if caption.relation is None:
        return torch.zeros(maps.shape[0], device=maps.device)
    h, w = maps.shape[2:]
    ys = torch.arange(h, device=maps.device, dtype=torch.float32).view(h, 1).expand(h, w)
    xs = torch.arange(w, device=maps.device, dtype=torch.float32).view(1, w).expand(h, w)

    def place(obj) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.softmax(maps[:, CLAIM_INDEX[f"{obj[0]} {obj[1]}"]].float().flatten(1), dim=1).view(-1, h, w)
        return (weights * ys).sum(dim=(1, 2)), (weights * xs).sum(dim=(1, 2))

    a, b = place(caption.objects[0]), place(caption.objects[1])
    axis, sign = RELATION_AXES[caption.relation]
    return F.logsigmoid(sign * (a[axis] - b[axis]))


def caption_score(net: ClaimsNet, images: torch.Tensor, caption: Caption) -> torch.Tensor:
    """Per image, how well it shows everything ``caption`` says: :func:`claim_score` of its pairs
    plus :func:`relation_loglik` of its relation. Higher is better."""
    maps = net.maps(images)
    targets, mask = (t.to(images.device) for t in caption_targets(caption))
    return claim_score(pooled(maps), targets, mask) + relation_loglik(maps, caption)


def save_claims_net(net: ClaimsNet, path, meta: dict | None = None) -> None:
    """Weights as safetensors; the header holds the architecture, the classes and ``meta`` (JSON)."""
    from studio.plumbing import save_safetensors

    header = {"format": FORMAT, "image_size": str(net.image_size), "ch": str(net.ch),
              "classes": json.dumps(list(CLAIM_CLASSES)), "meta": json.dumps(meta or {}, sort_keys=True)}
    save_safetensors(path, {k: v.detach().contiguous() for k, v in net.state_dict().items()}, header)


def load_claims_net(path, device: str = "cpu") -> ClaimsNet:
    """A :class:`ClaimsNet` from :func:`save_claims_net`'s file; a one-line ValueError for any
    file that is not one (unreadable, not safetensors, another format, damaged tensors)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from studio.plumbing import one_line

    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        if header.get("format") != FORMAT:
            raise ValueError(f"not a claims classifier (format {header.get('format')!r})")
        if json.loads(header.get("classes", "[]")) != list(CLAIM_CLASSES):
            raise ValueError("trained on other claim classes than this version of the shapes grammar")
        net = ClaimsNet(int(header["image_size"]), int(header["ch"]))
        net.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, KeyError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: {one_line(exc)}") from None
    return net.to(device).eval().requires_grad_(False)


def claims_training_record(path) -> dict:
    """The ``meta`` :func:`save_claims_net` wrote into a file's header (steps, held-out accuracy...)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("meta", "{}"))
