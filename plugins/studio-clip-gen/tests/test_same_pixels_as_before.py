"""The faster generation path keeps every pixel and every choice of the path it replaced.

``_ReferenceGenerator`` is the generator as it was before decoding was batched: the same sampling,
then every candidate decoded alone. The current generator must return byte-identical images and the
same candidates, scores and kept indices, on the bundled model (64px, real weights, both convolution
backends in play) and on the tiny test model, so `regen --verify` of older images still matches.
"""

from __future__ import annotations

import pytest
import torch

from studio.generators import GenerationError, Request
from studio_clip_gen import plugin
from studio_clip_gen.generator import ClipGenGenerator, candidate_seed
from studio_clip_gen.vqgan import VQConfig, VQModel


class _ReferenceGenerator(ClipGenGenerator):
    """The chunk step as it was: sample all rows, then decode one image at a time."""

    def _run_chunk(self, chunk, plan, images, scores, progress, done: int, total: int) -> int:
        from studio_clip_gen.clip_embed import encode_images
        from studio_clip_gen.gpt import sample

        temperature, top_k, top_p, guidance = plan[chunk[0][0]]["sampling"]
        cond = torch.stack([plan[i]["cond"] for i, _ in chunk]).to(self.device)
        gens = [torch.Generator().manual_seed(candidate_seed(plan[i]["seed"], j)) for i, j in chunk]
        tokens = sample(self.gpt, cond, gens, temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance)
        with torch.no_grad():
            decoded = torch.cat([self.vqgan.decode_indices(row[None]) for row in tokens]).float()
            if not torch.isfinite(decoded).all():
                raise GenerationError("NaN")
            decoded = decoded.clamp(-1, 1)
            target = torch.stack([plan[i]["target"] for i, _ in chunk]).to(self.device)  # the re-ranking CLIP's
            sims = (encode_images(self.rerank_clip, decoded) * target).sum(dim=-1)
            claimed = self._claim_scores(chunk, plan, decoded)  # the bundled folder's claims classifier
        for row, key in enumerate(chunk):
            images[key] = decoded[row].cpu()
            scores[key] = (float(sims[row]), claimed.get(row))
        return done + self.gpt.config.block_size + 1


def _pair(model_id, root):
    new, old = ClipGenGenerator(model_id, root), _ReferenceGenerator(model_id, root)
    new.load("cpu")
    old.load("cpu")
    return new, old


def _same(new, old, requests):
    a = new.generate(requests, lambda _d, _t: None)
    b = old.generate(requests, lambda _d, _t: None)
    for x, y in zip(a, b, strict=True):
        assert x.image.size == y.image.size and x.image.tobytes() == y.image.tobytes()
        assert x.extra == y.extra  # candidates, seeds, clip scores and the kept ones


@pytest.mark.skipif(not (plugin.BUNDLED_DIR / plugin.MODEL_JSON).is_file(), reason="bundled weights not installed")
def test_bundled_model_default_settings_keep_the_same_images():
    new, old = _pair("clip-gen", plugin.BUNDLED_DIR)
    prompts = ["a red circle above a blue square", "a green triangle", "two yellow squares"]
    for seed, prompt in zip((0, 7, 123456789), prompts):
        _same(new, old, [Request(prompt, seed, {}, index=0)])  # the defaults: 8 candidates, keep 1
    # several requests in one batch, keep > 1, and a sampling setting of their own
    _same(new, old, [Request(p, 40 + i, {"candidates": 5, "keep": 3, "top_k": 50}, index=i) for i, p in enumerate(prompts)])


def test_tiny_model_keeps_the_same_images(model_folder):
    new, old = _pair("clip-gen/tiny", model_folder)
    for seed in (1, 2, 3):
        _same(new, old, [Request("a red square", seed, {"candidates": 8, "top_k": 8}, index=0)])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [2, 3, 8])
def test_batched_decode_is_bit_identical_to_decoding_alone(threads, batch):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(batch)
        cfg = VQConfig(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(8,), resolution=64,
                       z_channels=64, embed_dim=64, n_embed=128)
        model = VQModel(cfg).eval()
        indices = torch.randint(0, cfg.n_embed, (batch, cfg.grid * cfg.grid))
        with torch.no_grad():
            alone = torch.cat([model.decode_indices(row[None]) for row in indices])
            together = model.decode_indices_as_alone(indices, batch=batch)
            plain = model.decode_indices(indices)
        assert torch.equal(together, alone)
        assert torch.allclose(plain, alone, atol=1e-4)  # the plain batched call is only close
    finally:
        torch.set_num_threads(before)
