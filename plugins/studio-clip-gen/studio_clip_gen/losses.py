"""The VQGAN's training losses: perceptual distances, taming's PatchGAN and its adaptive weight.

taming trains with LPIPS on VGG16, whose weights cannot be downloaded here. Two perceptual
distances are offered instead, chosen by the caller:

* :class:`LPIPS` in taming's own layout (``net.sliceN.*``, ``linN.model.1.weight``), loadable from a
  local file: a taming Lightning checkpoint carries it under ``loss.perceptual_loss.*``;
* :class:`ClipPerceptual`: the same recipe (unit-normalised features, squared difference, spatial
  mean) on the patch tokens of a small frozen CLIP, with unit channel weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# VGG16 ``features`` layer indices of each LPIPS slice (taming keeps the original indices as names).
_VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_VGG_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
              17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}
_VGG_POOLS = {4, 9, 16, 23}


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class _Lin(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class _Scaling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _VGGSlices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for n, (lo, hi) in enumerate(_VGG_SLICES, start=1):
            seq = nn.Sequential()
            for i in range(lo, hi):
                if i in _VGG_CONVS:
                    seq.add_module(str(i), nn.Conv2d(*_VGG_CONVS[i], 3, padding=1))
                elif i in _VGG_POOLS:
                    seq.add_module(str(i), nn.MaxPool2d(2, 2))
                else:
                    seq.add_module(str(i), nn.ReLU(inplace=False))
            setattr(self, f"slice{n}", seq)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for n in range(1, 6):
            x = getattr(self, f"slice{n}")(x)
            feats.append(x)
        return feats


class LPIPS(nn.Module):
    """taming's LPIPS (VGG16 + learned channel weights), frozen; images in ``[-1, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = _Scaling()
        self.net = _VGGSlices()
        for n, c in enumerate((64, 128, 256, 512, 512)):
            setattr(self, f"lin{n}", _Lin(c))
        self.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path: str | Path) -> "LPIPS":
        """Weights from a local file: a taming checkpoint (``loss.perceptual_loss.*``) or a bare LPIPS state dict."""
        from .checkpoints import check_state_dict, extract_state_dict, read_checkpoint

        state = extract_state_dict(read_checkpoint(path), path)
        for prefix in ("loss.perceptual_loss.", "perceptual_loss."):
            if any(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                break
        model = cls()
        expected = model.state_dict()
        for key in ("scaling_layer.shift", "scaling_layer.scale"):  # constants; some files omit them
            state.setdefault(key, expected[key])
        check_state_dict(expected, state, f"{path}: not LPIPS weights")
        model.load_state_dict(state)
        return model.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.net(self.scaling_layer(x)), self.net(self.scaling_layer(y))
        total = 0.0
        for n, (a, b) in enumerate(zip(fx, fy)):
            diff = (_unit(a.float()) - _unit(b.float())) ** 2  # float32 under mixed precision too
            total = total + getattr(self, f"lin{n}").model(diff).mean(dim=(2, 3), keepdim=True)
        return total  # [B, 1, 1, 1]


class ClipPerceptual(nn.Module):
    """LPIPS's recipe on a frozen CLIP's patch tokens after each vision block (unit channel weights)."""

    def __init__(self, clip_model: nn.Module, taps: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.clip = clip_model.requires_grad_(False).eval()
        layers = len(clip_model.visual.transformer.resblocks)
        self.taps = tuple(taps) if taps is not None else tuple(range(layers))

    def train(self, mode: bool = True) -> "ClipPerceptual":
        super().train(mode)
        self.clip.eval()  # the frozen CLIP never switches to training mode
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from studio.ml.clip_features import image_features, to_clip_input

        both = to_clip_input(torch.cat([x, y]), self.clip, mapping="clean")
        maps, _ = image_features(self.clip, both, self.taps)  # [2B, taps, C, g, g]
        a, b = maps.float().chunk(2)
        return ((_unit(a.flatten(0, 1)) - _unit(b.flatten(0, 1))) ** 2).sum(1).mean(dim=(1, 2)).view(x.shape[0], -1).mean(1)


class NLayerDiscriminator(nn.Module):
    """taming's PatchGAN (pix2pix): keys ``main.*`` as in its checkpoints; BatchNorm by default."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """taming's balance: ``|grad nll| / (|grad g| + 1e-4)`` at the decoder's last layer, clamped to ``[0, 1e4]``."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(weight, 0.0, max_weight).detach()
