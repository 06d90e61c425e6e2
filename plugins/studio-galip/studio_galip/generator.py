"""The GALIP generator: prompts (or images) and seeds in, PIL images out.

The sampling contract matches the official code, so an official checkpoint gives the same
pixels (on CPU, fp32, within one level of rounding):

* noise: ``torch.randn(1, nz, generator=torch.Generator("cpu").manual_seed(seed))`` per image;
* condition: the un-normalised CLIP sentence embedding (scaled per the model's config);
* ``img = G(noise, cond)`` in eval mode, no gradients;
* ``pixels = ((img.clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255)`` truncated to uint8.

Each image is a function of its own request only. On CPU a matrix product over a batch of
one and over a batch of several can round differently (gemv vs gemm kernels), so by default
every image runs through the networks on its own: a batch gives bit-identical pixels to single
calls. ``batch_invariant=False`` runs chunks as one batch instead, faster for bulk sampling
(about 1.4x for the small model), with last-bit differences between batch sizes.

A request can also be one frame of a walk through the latent space (the ``interp_*``
parameters, see :func:`interpolation_requests`): its noise is slerped from its seed's towards
``interp_seed_to``'s and its sentence embedding lerped towards ``interp_to``'s, by
``interp_t``. So every frame is an ordinary, reproducible image of the model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from studio.api import GenerationError, ProgressCallback, Request, Result, prompt_cache

from studio.ml import BUNDLED_CLIP_ARCH as BUNDLED_CLIP  # ``clip_arch`` of Studio's own small CLIP files

from .plugin import INTERPOLATION_MODES, NO_SEED  # beside the parameter table that uses them


@dataclass(frozen=True)
class GalipSource:
    """Where a GALIP model's files are and what they are."""

    model_id: str
    weights: Path
    clip_arch: str
    clip_file: Path
    weights_sha256: str | None = None
    clip_sha256: str | None = None


def open_clip_model(arch: str, path: str | Path, device: str = "cpu"):
    """A frozen CLIP: Studio's bundled format or any open_clip architecture from a local file."""
    from studio.ml import clip_load

    if arch == BUNDLED_CLIP:
        return clip_load.load_bundled_clip(path, device=device)
    return clip_load.load_clip(arch, path, device=device)


def to_uint8(images):
    """[B,3,H,W] in about [-1, 1] -> [B,H,W,3] uint8, exactly as the official sampler."""
    import torch

    pixels = ((images.clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def noise_for(seeds: Sequence[int], nz: int):
    """One noise row per seed, each from its own CPU generator (the official numbers)."""
    import torch

    return torch.cat([torch.randn(1, nz, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])


def slerp(a, b, t: float):
    """Spherical interpolation between noise vectors: keeps the norm a Gaussian sample has."""
    import torch

    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1).unsqueeze(-1)
    omega = torch.arccos(cos)
    so = torch.sin(omega)
    if float(so.abs().min()) < 1e-6:
        return (1 - t) * a + t * b
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


def interpolation_params(to_prompt: str | None, to_seed: int | None, t: float) -> dict[str, Any]:
    """The model parameters of one frame: ``t`` of the way towards ``to_prompt`` / ``to_seed``.

    ``None`` (or the request's own value, left to the caller) means that part does not move.
    """
    return {"interp_to": to_prompt or "", "interp_seed_to": NO_SEED if to_seed is None else int(to_seed),
            "interp_t": float(t)}


def interpolation_requests(prompts: Sequence[str], seeds: Sequence[int], frames: int = 8,
                           what: str = "both") -> list[Request]:
    """The frames of a walk through the latent space, one ordinary request each.

    ``prompts`` and ``seeds`` give the key points (the shorter list repeats its last entry);
    ``what`` chooses what moves: ``noise`` (slerp between seeds, at the first prompt), ``text``
    (lerp between sentence embeddings, at the first seed) or ``both``. Between keys k and k+1
    the frames are key k's prompt and seed with ``interp_t`` = 0, 1/frames, ... towards key
    k+1; the last segment ends with t = 1, so there are ``(keys - 1) * frames + 1`` frames and
    the first and last are the keys themselves.
    """
    if what not in INTERPOLATION_MODES:
        raise ValueError(f"what must be noise, text or both, got {what!r}")
    if not prompts or not seeds:
        raise ValueError("give at least one prompt and one seed")
    keys = max(len(prompts), len(seeds))
    if keys < 2 or frames < 1:
        raise ValueError("give at least two prompts or two seeds, and frames >= 1")
    prompts = list(prompts) + [prompts[-1]] * (keys - len(prompts))
    seeds = [int(s) for s in seeds] + [int(seeds[-1])] * (keys - len(seeds))
    out: list[Request] = []
    for k in range(keys - 1):
        a, b = (prompts[0], prompts[0]) if what == "noise" else (prompts[k], prompts[k + 1])
        sa, sb = (seeds[0], seeds[0]) if what == "text" else (seeds[k], seeds[k + 1])
        for f in range(frames + (1 if k == keys - 2 else 0)):
            params = interpolation_params(b if b != a else None, sb if sb != sa else None, f / frames)
            out.append(Request(a, sa, params, index=len(out)))
    return out


def _interpolation(request: Request) -> tuple[str | None, int | None, float]:
    """(target prompt or None, target seed or None, t) of a request, from its ``interp_*`` params."""
    params = request.params
    to_prompt = params.get("interp_to") or None
    to_seed = params.get("interp_seed_to", NO_SEED)
    to_seed = None if to_seed is None or int(to_seed) < 0 else int(to_seed)
    t = float(params.get("interp_t", 0.0) or 0.0)
    if not 0.0 <= t <= 1.0:
        raise GenerationError(f"interp_t must be between 0 and 1, got {t}")
    return to_prompt, to_seed, t


def _encode_prompt(clip, prompt: str):
    """A prompt's sentence embedding (one prompt per call, as :func:`prompt_cache` needs)."""
    from studio.ml.clip_features import sentence_embedding, tokenize_for

    return sentence_embedding(clip, tokenize_for(clip, [prompt])).float()[0]


class GalipGenerator:
    """Implements :class:`studio.generators.Generator` for GALIP models."""

    def __init__(self, source: GalipSource | None = None, chunk: int = 16, plugin_version: str = "",
                 batch_invariant: bool = True) -> None:
        self.source = source
        self.chunk = 1 if batch_invariant else max(1, chunk)
        self.batch_invariant = batch_invariant
        self._text_embedding = None  # prompt -> its sentence embedding, least recently used dropped (made at load)
        self.plugin_version = plugin_version
        self.nets = None
        self.device = "cpu"
        self.weights_sha256 = source.weights_sha256 if source else None
        self.clip_sha256 = source.clip_sha256 if source else None

    @classmethod
    def from_nets(cls, nets, model_id: str = "galip", weights_sha256: str = "", **kwargs) -> "GalipGenerator":
        """A generator around networks already in memory (tests, training samples)."""
        gen = cls(GalipSource(model_id, Path(), "", Path(), weights_sha256), **kwargs)
        gen.nets = nets
        gen._new_text_cache()
        return gen

    def _new_text_cache(self) -> None:
        """An empty prompt -> embedding cache for the networks now loaded."""
        self._text_embedding = prompt_cache(functools.partial(_encode_prompt, self.nets.clip))

    @property
    def model_id(self) -> str:
        return self.source.model_id if self.source else "galip"

    # ---- Generator protocol -----------------------------------------------------------------

    def load(self, device: str = "cpu") -> None:
        from studio.api import WeightsError, without_random_init

        from .checkpoints import check_clip_fits, infer_config, load_into, read_weights
        from .model import build_nets

        self.device = device
        if self.nets is None:
            src = self.source
            try:
                weights = read_weights(src.weights)
                clip = open_clip_model(src.clip_arch, src.clip_file, device="cpu")
                cfg = weights.config or infer_config(weights, clip, src.weights)
                check_clip_fits(cfg, clip, f"{src.clip_arch} ({src.clip_file})")
                with without_random_init():  # load_into sets every weight of G (the trunk is the CLIP's)
                    nets = build_nets(cfg, clip, with_d=False)
                load_into(nets, weights, src.weights)
            except WeightsError as exc:
                raise GenerationError(f"model {src.model_id!r}: {exc}") from None
            # Recipes carry these hashes: make sure they describe the files actually loaded.
            self.weights_sha256 = _verified_sha(src.model_id, src.weights, src.weights_sha256)
            self.clip_sha256 = _verified_sha(src.model_id, src.clip_file, src.clip_sha256)
            self.nets = nets
        self.nets.G.to(device).eval()
        self.nets.clip.to(device).eval()
        self._new_text_cache()

    def describe(self) -> dict[str, Any]:
        cfg = self.nets.cfg if self.nets else None
        return {
            "model": self.model_id,
            "plugin": "studio-galip",
            "plugin_version": self.plugin_version,
            "weights_sha256": self.weights_sha256,
            "clip_arch": self.source.clip_arch if self.source else "",
            "clip_sha256": self.clip_sha256,
            "resolution": cfg.image_size if cfg else None,
            "image_mapping": cfg.mapping if cfg else None,
            "cond_scale": cfg.cond_scale if cfg else None,
            "device": str(self.device),
            "dtype": "float32",
        }

    def generate(self, requests: list[Request], progress: ProgressCallback) -> list[Result]:
        import torch
        from PIL import Image

        self._require_loaded()
        results: list[Result] = []
        total = len(requests)
        for batch in self._chunks(requests):
            fast = _cpu_kernels(batch[0]) == "fast"
            with torch.no_grad():
                cond = self.conditions(batch)
                noise = self.noise(batch)
                images, ran = self.render(noise, cond, fast=fast)
            pixels = self.checked_pixels(images, batch).cpu().numpy()
            for request, array in zip(batch, pixels):
                extra = self._extra(request)
                if fast and not ran:  # Winograd was asked for and this PyTorch lacks NNPACK: say so
                    extra["cpu_kernels_ran"] = "fused only (no NNPACK for Winograd)"
                results.append(Result(Image.fromarray(array), extra=extra))
            progress(len(results), total)
        return results

    def _chunks(self, requests: list[Request]) -> list[list[Request]]:
        """Runs of at most ``chunk`` requests that ask for the same CPU kernels."""
        out: list[list[Request]] = []
        for request in requests:
            if out and len(out[-1]) < self.chunk and _cpu_kernels(out[-1][0]) == _cpu_kernels(request):
                out[-1].append(request)
            else:
                out.append([request])
        return out

    # ---- building blocks ----------------------------------------------------------------------

    def sentence_embeddings(self, prompts: Sequence[str]):
        """Raw CLIP sentence embeddings [B, cond_dim] (fp32, on the device).

        Batch-invariant generators encode each distinct prompt on its own (and remember it:
        a job usually repeats one prompt), so the embedding never depends on the batch.
        """
        import torch

        from studio.ml.clip_features import sentence_embedding, tokenize_for

        clip = self.nets.clip
        if not self.batch_invariant:
            return sentence_embedding(clip, tokenize_for(clip, list(prompts))).float()
        return torch.stack([self._text_embedding(prompt) for prompt in prompts])

    def noise(self, requests: Sequence[Request]):
        """The noise of each request: its seed's, slerped towards ``interp_seed_to``'s by ``interp_t``."""
        import torch

        rows = []
        for request in requests:
            _, to_seed, t = _interpolation(request)
            z = noise_for([request.seed], self.nets.cfg.nz)
            if to_seed is not None and to_seed != request.seed and t > 0:
                z_to = noise_for([to_seed], self.nets.cfg.nz)
                z = z_to if t == 1 else slerp(z, z_to, t)
            rows.append(z)
        return torch.cat(rows)

    def conditions(self, requests: Sequence[Request]):
        """The condition each request asks for: its prompt (lerped towards ``interp_to`` by
        ``interp_t``), or an image mixed in by strength."""
        import torch

        from .model import condition

        raw = self.sentence_embeddings([r.prompt for r in requests])
        moves = [(i, _interpolation(r)) for i, r in enumerate(requests)]
        moves = [(i, to, t) for i, (to, _, t) in moves if to is not None and to != requests[i].prompt and t > 0]
        if moves:
            targets = self.sentence_embeddings([to for _, to, _ in moves])
            raw = raw.clone()
            for (i, _, t), target in zip(moves, targets):
                raw[i] = target if t == 1 else torch.lerp(raw[i], target, t)
        rows = []
        for request, text in zip(requests, raw):
            image = request.params.get("image") or getattr(request, "image", None)
            if image:
                strength = float(request.params.get("image_strength", 1.0))
                emb = self.image_embedding(image)
                if self.nets.cfg.cond_scale == "raw":
                    emb = emb * (text.norm() / emb.norm().clamp_min(1e-8))  # the norm G was trained on
                text = torch.lerp(text, emb, strength)
            rows.append(text)
        return condition(torch.stack(rows), self.nets.cfg.cond_scale)

    def image_embedding(self, reference: str | Path):
        """CLIP image embedding of a stored input (``inputs/<sha256>.png``, see ``studio.api.resolve_input``),
        seen through the model's image mapping. Anything else, a path above all, is refused: a
        recipe never makes the generator open a file outside the studio's inputs store."""
        import numpy as np
        import torch
        from PIL import Image, UnidentifiedImageError

        from studio.api import InputError, load_settings, resolve_input
        from studio.ml.clip_features import clip_image_size, image_embedding, to_clip_input

        clip = self.nets.clip
        size = clip_image_size(clip)
        try:
            with Image.open(resolve_input(load_settings(), str(reference))) as img:
                img = _center_square(img.convert("RGB")).resize((size, size), Image.BICUBIC)
        except (OSError, UnidentifiedImageError, InputError) as exc:
            raise GenerationError(f"cannot read conditioning image {reference}: {exc}") from None
        x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        x = x.to(self.device)
        return image_embedding(clip, to_clip_input(x, clip, self.nets.cfg.mapping))[0].float()

    def render(self, noise, cond, fast: bool = False):
        """Run G in eval mode: (float images [B,3,S,S], not yet clamped; whether the kernels asked
        for ran as asked).

        ``fast``: on CPU, the large 3x3 convolutions on NNPACK's Winograd kernels and the fused
        modulation (see :mod:`studio_galip.kernels`; the ``cpu_kernels`` parameter). On other
        devices the parameter means nothing: every op runs as it is.
        """
        import torch

        from .kernels import fast_kernels

        G = self.nets.G
        # eval() sets a flag on every module (1.5-2 ms for the small model, 10-15% of its time
        # per image on one core); reading the flags is several times cheaper, and eval() is only
        # needed after training.
        if any(m.training for m in G.modules()):
            G.eval()
        on_cpu = torch.device(self.device).type == "cpu"
        side = self.nets.cfg.image_size
        with torch.no_grad(), fast_kernels(G, enabled=fast and on_cpu, max_side=side) as ran:
            return G(noise.to(self.device), cond.to(self.device)), ran

    def checked_pixels(self, images, requests: Sequence[Request]):
        """uint8 pixels; NaN/inf or a single-colour image fails the job with a clear message."""
        import torch

        finite = torch.isfinite(images).flatten(1).all(dim=1)
        for ok, request in zip(finite.tolist(), requests):
            if not ok:
                raise GenerationError(
                    f"model {self.model_id!r} produced NaN/inf pixels (seed {request.seed}); "
                    "the weights are probably damaged or diverged"
                )
        pixels = to_uint8(images)
        flat = pixels.flatten(1, 2)
        collapsed = (flat == flat[:, :1]).all(dim=2).all(dim=1)
        for bad, request in zip(collapsed.tolist(), requests):
            if bad:
                raise GenerationError(
                    f"model {self.model_id!r} produced a single-colour image (seed {request.seed}); "
                    "the output collapsed, the weights are probably damaged or untrained"
                )
        return pixels

    def interpolate(self, prompts: Sequence[str], seeds: Sequence[int], frames: int = 8, what: str = "both"):
        """Frames along a path through the latent space, as PIL images.

        The images of :func:`interpolation_requests` (see there for the arguments): each is
        exactly what ``generate`` makes of its frame's request.
        """
        self._require_loaded()
        requests = interpolation_requests(prompts, seeds, frames=frames, what=what)
        return [result.image for result in self.generate(requests, lambda done, total: None)]

    # ---- helpers ------------------------------------------------------------------------------

    def _require_loaded(self) -> None:
        if self.nets is None:
            raise GenerationError(f"model {self.model_id!r} is not loaded (call load(device) first)")

    def _extra(self, request: Request) -> dict[str, Any]:
        extra: dict[str, Any] = {"noise": "torch.randn(1, nz) from torch.Generator('cpu').manual_seed(seed)"}
        if request.params.get("image"):
            extra["image_condition"] = str(request.params["image"])
        to_prompt, to_seed, t = _interpolation(request)
        if t > 0 and (to_prompt not in (None, request.prompt) or to_seed not in (None, request.seed)):
            extra["interpolation"] = (
                "noise: slerp(noise(seed), noise(interp_seed_to), interp_t); "
                "text: lerp(embedding(prompt), embedding(interp_to), interp_t) before scaling"
            )
        return extra


def _cpu_kernels(request: Request) -> str:
    """The request's ``cpu_kernels``; a request without it (a recipe older than the parameter) is exact."""
    return str(request.params.get("cpu_kernels", "exact"))


def _verified_sha(model_id: str, path: Path, expected: str | None) -> str:
    from studio.api import sha256_file_cached

    actual = sha256_file_cached(path)  # remembered by path, size and mtime: no second read of the weights
    if expected and actual != expected:
        raise GenerationError(
            f"model {model_id!r}: {path} changed since it was installed (sha256 {actual[:12]}..., "
            f"expected {expected[:12]}...); import it again"
        )
    return actual


def _center_square(img):
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def strip_frames(frames, path: str | Path) -> Path:
    """Save frames side by side as one PNG strip."""
    from PIL import Image

    w, h = frames[0].size
    strip = Image.new("RGB", (w * len(frames), h))
    for i, frame in enumerate(frames):
        strip.paste(frame, (i * w, 0))
    path = Path(path)
    strip.save(path)
    return path
