"""The CLIP-GEN generator: prompt -> CLIP text embedding -> tokens -> VQGAN decoder -> image.

Each request samples ``candidates`` token grids, scores every decoded candidate by the cosine of
its CLIP image embedding with the prompt's (or the conditioning image's) embedding, and returns the
best one (or, with ``keep`` > 1, a row of the best ``keep``). The scoring CLIP is the conditioning
one unless the model folder names a re-ranking CLIP of its own (``model.json``'s ``rerank``): the
condition must be the CLIP the transformer was trained on, while the judge of finished pictures
can be one trained harder to tell them apart. A folder may also hold a claims classifier
(``model.json``'s ``claims``, :mod:`studio.ml.claims`): for a prompt in the `shapes` grammar it reads
each candidate's colours, shapes and sizes off the pixels, which the small CLIPs cannot tell apart
well, and where they are (for the relation); the candidates are ranked by its score plus the
CLIP's times the folder's ``clip_weight`` (0: the classifier alone), each standardised over the
request's candidates (:func:`rank_scores`); other prompts are ranked by the CLIP alone. Candidate 0 uses the request's seed and candidate ``j`` a seed derived
from it (:func:`candidate_seed`); every candidate's seed and score goes into ``Result.extra``, and
any candidate is re-made with ``--seed S --param candidates=1``.

With the ``image`` parameter the condition is the CLIP image embedding of that file instead of the
prompt's text embedding (the embedding the transformer was trained on).
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any

from studio.api import GenerationError, ProgressCallback, Request, Result, prompt_cache

from .plugin import DEFAULTS

#: Rows sampled together; every row has its own generator, so this only trades memory for speed.
CHUNK = 32
#: Images decoded together (bounds the decoder's activation memory; the pixels do not depend on it).
DECODE_BATCH = 8


def candidate_seed(seed: int, index: int) -> int:
    """Seed of candidate ``index`` of a request with ``seed``: the seed itself for candidate 0."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"clip-gen candidate {seed} {index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def plugin_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("studio-clip-gen")
    except PackageNotFoundError:
        return "0+unknown"


class ClipGenGenerator:
    """Loads a model folder (see ``model_dir``) once; generates batches of requests."""

    def __init__(self, model_id: str, root: Path) -> None:
        self.model_id, self.root = model_id, Path(root)
        self.device = "cpu"
        self.vqgan = self.gpt = self.clip = self.rerank_clip = self.claims = None
        self.claims_clip_weight = 1.0
        self._description: dict[str, Any] = {}
        # prompt -> its text embedding by the conditioning CLIP and by the re-ranking one, cached per
        # load (a worker sees repeats)
        self._text_embedding = self._rerank_text_embedding = None

    # ---- protocol ----------------------------------------------------------------------------

    def load(self, device: str) -> None:
        import torch

        from studio.api import without_random_init

        from . import model_dir
        from .checkpoints import WeightsError, check_state_dict, load_vqgan, read_safetensors
        from .clip_embed import embed_dim
        from .gpt import GPT, GPTConfig
        from .train import check_compatible

        try:
            manifest = model_dir.read_manifest(self.root)
            vqgan = load_vqgan(self.root / manifest["vqgan"])
            state, meta = read_safetensors(self.root / manifest["transformer"])
            with without_random_init():  # the strict load below sets every weight
                gpt = GPT(GPTConfig.from_dict(meta["gpt"]))
            with torch.device("meta"):
                expected = GPT(gpt.config).state_dict()
            check_state_dict(expected, state, f"{self.root / manifest['transformer']}")
            gpt.load_state_dict(state, strict=True)
            clip = model_dir.load_clip(self.root, manifest["clip"], device)
            check_compatible(gpt.config, vqgan.config, embed_dim(clip))
            rerank = clip if model_dir.rerank_is_clip(self.root, manifest) else model_dir.load_clip(
                self.root, manifest["rerank"], device)
            claims = None
            if manifest.get("claims"):
                from studio.ml.claims import load_claims_net

                claims = load_claims_net(self.root / manifest["claims"]["file"], device)
            clip_weight = model_dir.claims_clip_weight(manifest)
        except (OSError, KeyError, ValueError, WeightsError) as exc:
            raise GenerationError(f"model {self.model_id!r} cannot be loaded from {self.root}: {exc}") from None
        self.device = device
        self.vqgan = vqgan.to(device).eval().requires_grad_(False)
        self.gpt = gpt.to(device).eval().requires_grad_(False)
        self.clip, self.rerank_clip, self.claims = clip, rerank, claims
        self.claims_clip_weight = clip_weight
        self._text_embedding = _prompt_cache(clip)
        self._rerank_text_embedding = self._text_embedding if rerank is clip else _prompt_cache(rerank)
        self._description = {
            "model": self.model_id,
            "plugin": "clip-gen",
            "plugin_version": plugin_version(),
            "weights_sha256": model_dir.weights_sha256(self.root, manifest),
            "resolution": vqgan.config.resolution,
            "grid": vqgan.config.grid,
            "codes": vqgan.config.n_embed,
            "clip": manifest["clip"].get("arch", manifest["clip"]["kind"]),
            **({"rerank_clip": _clip_name(manifest["rerank"])} if manifest.get("rerank") else {}),
            **({"claims": Path(manifest["claims"]["file"]).name} if manifest.get("claims") else {}),
            **({"claims_clip_weight": self.claims_clip_weight} if model_dir.records_clip_weight(manifest) else {}),
            "dtype": "float32",
        }

    def describe(self) -> dict[str, Any]:
        return dict(self._description) or {"model": self.model_id, "plugin": "clip-gen", "plugin_version": plugin_version(),
                                           "weights_sha256": None, "dtype": "float32"}

    def generate(self, requests: list[Request], progress: ProgressCallback) -> list[Result]:
        import torch

        if self.gpt is None:
            raise GenerationError(f"model {self.model_id!r} was not loaded")
        plan = [self._plan(r) for r in requests]
        rows = [(i, j) for i, p in enumerate(plan) for j in range(p["candidates"])]
        chunks = _chunks(rows, plan)
        total = sum(self.gpt.config.block_size + 1 for _ in chunks)
        done = 0
        images: dict[tuple[int, int], torch.Tensor] = {}
        scores: dict[tuple[int, int], tuple[float, float | None]] = {}  # (CLIP score, claims score)
        for chunk in chunks:
            done = self._run_chunk(chunk, plan, images, scores, progress, done, total)
        return [self._result(i, p, images, scores) for i, p in enumerate(plan)]

    # ---- steps -------------------------------------------------------------------------------

    def _plan(self, request: Request) -> dict[str, Any]:
        params = {**DEFAULTS, **request.params}  # the engine fills them; direct callers may not
        candidates = int(params["candidates"])
        image_path = str(params.get("image") or "")
        return {
            "seed": request.seed,
            "prompt": request.prompt,
            "image": image_path,
            "candidates": candidates,
            "keep": max(1, min(int(params["keep"]), candidates)),
            "skip_blank": bool(params.get("skip_blank", False)),
            "sampling": (float(params["temperature"]), int(params["top_k"]), float(params["top_p"]),
                         float(params.get("guidance", 1.0))),
            **self._conditions(request.prompt, image_path),
            "claims": None if image_path else self._claims_caption(request.prompt),
        }

    def _claims_caption(self, prompt: str):
        """What the claims classifier checks a prompt's candidates for (the prompt read as a
        `shapes` caption); None without a classifier or for a prompt outside the grammar."""
        if self.claims is None:
            return None
        from studio.ml.shapes import parse_caption

        return parse_caption(prompt)

    def _conditions(self, prompt: str, image_path: str) -> dict[str, Any]:
        """``cond``, what the transformer samples from, and ``target``, what candidates are scored against."""
        from .clip_embed import encode_images

        if not image_path:
            return {"cond": self._text_embedding(prompt), "target": self._rerank_text_embedding(prompt)}
        import torch

        pixels = self._conditioning_pixels(image_path)
        with torch.no_grad():
            cond = encode_images(self.clip, pixels)[0]
            target = cond if self.rerank_clip is self.clip else encode_images(self.rerank_clip, pixels)[0]
        return {"cond": cond, "target": target}

    def _conditioning_pixels(self, image_path: str):
        """The conditioning image, centre-cropped and resized to the model's resolution, in [-1, 1]."""
        import torch
        from PIL import Image, UnidentifiedImageError

        from studio.api import InputError, load_settings, resolve_input

        try:
            with Image.open(resolve_input(load_settings(), image_path)) as im:
                rgb = im.convert("RGB")
        except (OSError, UnidentifiedImageError, InputError) as exc:
            raise GenerationError(f"cannot read the conditioning image: {exc}") from None
        size = self.vqgan.config.resolution
        side = min(rgb.size)
        left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)
        return (x.float() / 127.5 - 1).unsqueeze(0).to(self.device)

    def _run_chunk(self, chunk, plan, images, scores, progress, done: int, total: int) -> int:
        import torch

        from .clip_embed import encode_images
        from .gpt import sample

        temperature, top_k, top_p, guidance = plan[chunk[0][0]]["sampling"]
        if guidance != 1.0 and not self.gpt.config.null_condition:
            raise GenerationError(f"model {self.model_id!r} was trained without a null condition: guidance must be 1 "
                                  "(train the transformer with --cond-drop to use it)")
        cond = torch.stack([plan[i]["cond"] for i, _ in chunk]).to(self.device)
        gens = [torch.Generator().manual_seed(candidate_seed(plan[i]["seed"], j)) for i, j in chunk]
        offset = done

        def step(d: int, _t: int) -> None:
            progress(offset + d, total)

        tokens = sample(self.gpt, cond, gens, temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance,
                        progress=step)
        with torch.no_grad():
            # batched, but every image bit-identical to decoding it alone: PyTorch would otherwise pick
            # other convolution kernels for a batch, and an image must not depend on what it was batched
            # with (regen is bit for bit; see vqgan.batch_of_one_numerics)
            decoded = self.vqgan.decode_indices_as_alone(tokens, DECODE_BATCH).float()
            if not torch.isfinite(decoded).all():
                raise GenerationError(f"model {self.model_id!r} produced NaN/inf pixels (broken weights?)")
            decoded = decoded.clamp(-1, 1)
            flat = decoded.flatten(1).std(dim=1) < 1e-3
            if flat.any():
                raise GenerationError(f"model {self.model_id!r} produced a flat image (collapsed output)")
            target = torch.stack([plan[i]["target"] for i, _ in chunk]).to(self.device)
            sims = (encode_images(self.rerank_clip, decoded) * target).sum(dim=-1)
            claimed = self._claim_scores(chunk, plan, decoded)
        for row, key in enumerate(chunk):
            images[key] = decoded[row].cpu()
            scores[key] = (float(sims[row]), claimed.get(row))
        progress(offset + self.gpt.config.block_size + 1, total)
        return offset + self.gpt.config.block_size + 1

    def _claim_scores(self, chunk, plan, decoded) -> dict[int, float]:
        """Row -> the claims classifier's score, for the rows whose prompt it can judge. One image
        at a time: a score must not depend on what the image was batched with."""
        from studio.ml.claims import caption_score

        return {row: float(caption_score(self.claims, decoded[row : row + 1], plan[i]["claims"])[0])
                for row, (i, _j) in enumerate(chunk) if plan[i]["claims"] is not None}

    def _result(self, i: int, p: dict, images, scores) -> Result:
        import torch

        from .imaging import grid, to_pil

        blank = set()
        if p["skip_blank"] and p["candidates"] > 1:
            from studio.api import is_near_blank

            blank = {j for j in range(p["candidates"]) if is_near_blank(to_pil(images[(i, j)]))}
        # near-blank candidates rank after every other one (CLIP can prefer an empty canvas to a
        # wrong drawing); among the rest, and among them, the scores decide
        rank = rank_scores([scores[(i, j)] for j in range(p["candidates"])], self.claims_clip_weight)
        ranked = sorted(range(p["candidates"]), key=lambda j: (j in blank, -rank[j], j))
        kept = ranked[: p["keep"]]
        if len(kept) == 1:
            image = to_pil(images[(i, kept[0])])
        else:
            image = grid([torch.stack([images[(i, j)] for j in kept])], pad=0)
        extra = {
            "candidates": [{"index": j, "seed": candidate_seed(p["seed"], j), "clip_score": round(scores[(i, j)][0], 6),
                            **({"claims_score": round(scores[(i, j)][1], 6)} if p["claims"] is not None else {})}
                           for j in range(p["candidates"])],
            "kept": [{"index": j, "seed": candidate_seed(p["seed"], j)} for j in kept],
            **({"near_blank": sorted(blank)} if blank else {}),
            "condition": "image" if p["image"] else "text",
        }
        return Result(image=image, extra=extra)


#: The least spread each score is divided by when standardised: where every candidate scores
#: within this of the others, their differences are noise and stay small instead of being
#: blown up to the weight of the other score's real differences.
CLIP_SPREAD_FLOOR = 0.01  # cosine
CLAIMS_SPREAD_FLOOR = 0.05  # mean log-likelihood (one wrong pair in 32 costs about 0.3)


def rank_scores(scores: list[tuple[float, float | None]], clip_weight: float = 1.0) -> list[float]:
    """One number per candidate from its (CLIP score, claims score): the CLIP score alone when
    there is no claims score, else the claims score plus ``clip_weight`` times the CLIP's, each
    standardised over the candidates (their scales differ: cosines vs mean log-likelihoods). At
    weight 0 the CLIP plays no part: among candidates that all read right, the classifier's own
    small differences decide (the spread floors only matter for a sum)."""
    clip = [s[0] for s in scores]
    if any(s[1] is None for s in scores) or len(scores) < 2:
        return clip
    return [b + clip_weight * a for a, b in zip(_standardised(clip, CLIP_SPREAD_FLOOR),
                                                _standardised([s[1] for s in scores], CLAIMS_SPREAD_FLOOR))]


def _standardised(values: list[float], floor: float) -> list[float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return [(v - mean) / max(std, floor) for v in values]


def _clip_name(spec: dict[str, Any]) -> str:
    """How a description names a CLIP of the folder: its architecture (or kind) and file."""
    return f"{spec.get('arch', spec['kind'])} ({Path(spec['file']).name})"


def _encode_prompt(clip, prompt: str):
    """A prompt's text embedding (one prompt per call, as :func:`prompt_cache` needs)."""
    from .clip_embed import encode_text

    return encode_text(clip, [prompt])[0]


def _prompt_cache(clip):
    """prompt -> its text embedding by ``clip``."""
    return prompt_cache(functools.partial(_encode_prompt, clip))


def _chunks(rows: list[tuple[int, int]], plan: list[dict]) -> list[list[tuple[int, int]]]:
    """Rows grouped by sampling settings (a batch samples with one setting), at most ``CHUNK`` each."""
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault(plan[row[0]]["sampling"], []).append(row)
    out = []
    for group in groups.values():
        n = math.ceil(len(group) / CHUNK)
        out += [group[k * CHUNK : (k + 1) * CHUNK] for k in range(n)]
    return out
