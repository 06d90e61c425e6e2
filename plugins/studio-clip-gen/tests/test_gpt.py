"""The transformer: cache equality, deterministic batch-invariant sampling, the clip-gen mapping."""

from __future__ import annotations

import pytest
import torch

from studio.generators import JobCanceled
from studio_clip_gen.gpt import GPT, GPT2_MEDIUM_16384, GPTConfig, KVCache, clipgen_to_ours, filter_logits, sample

TINY = GPTConfig(n_codes=32, grid=4, width=32, n_layers=2, n_heads=4, clip_dim=16)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(TINY).eval()


def _generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_logits_with_and_without_cache_are_equal(model):
    cond = torch.randn(3, 16)
    tokens = torch.randint(0, 32, (3, TINY.block_size - 1))
    with torch.no_grad():
        full = model(cond, tokens)  # [3, 16, 32]
        cache = KVCache(TINY, 3, cond.device, torch.float32)
        stepped = [model.start(cond, cache)] + [model.step(tokens[:, i], cache) for i in range(tokens.shape[1])]
    assert full.shape == (3, TINY.block_size, 32)
    assert torch.allclose(torch.stack(stepped, dim=1), full, atol=1e-5)


def test_condition_is_normalised_and_position_zero_predicts_token_zero(model):
    cond = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.allclose(model(cond), model(cond * 7.5), atol=1e-5)  # scale-free condition
        logits = model(cond, torch.randint(0, 32, (2, 5)))
        assert torch.allclose(logits[:, :1], model(cond), atol=1e-5)  # causal: later tokens never leak back


def test_sampling_is_seeded_batch_invariant_and_cache_free_equal(model):
    cond = torch.randn(3, 16)
    seeds = (11, 12, 13)
    kwargs = dict(temperature=1.0, top_k=10, top_p=0.9)
    batched = sample(model, cond, _generators(*seeds), **kwargs)
    assert batched.shape == (3, TINY.block_size) and batched.dtype == torch.long
    for i, seed in enumerate(seeds):
        alone = sample(model, cond[i : i + 1], _generators(seed), **kwargs)
        assert torch.equal(alone[0], batched[i])
    assert torch.equal(sample(model, cond, _generators(*seeds), **kwargs), batched)  # repeatable
    assert torch.equal(sample(model, cond, _generators(*seeds), use_cache=False, **kwargs), batched)
    other = sample(model, cond, _generators(21, 22, 23), **kwargs)
    assert not torch.equal(other, batched)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).sum() == 2
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.5 + 0.3 crosses it
    assert torch.isfinite(filter_logits(logits, top_p=0.01)).sum() == 1  # always keeps the best
    cold = filter_logits(logits, temperature=0.5).softmax(-1)
    assert cold[0, 0] > 0.5


def test_progress_can_cancel(model):
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done == 3:
            raise JobCanceled()

    with pytest.raises(JobCanceled):
        sample(model, torch.randn(1, 16), _generators(0), progress=progress)
    assert seen == [(1, 16), (2, 16), (3, 16)]


def test_clipgen_gpt2_medium_layout_maps_onto_ours(manifest):
    rows = manifest("clipgen_gpt2_medium_16384_keys.txt")
    state = {k: torch.empty(s, device="meta", dtype=torch.bool if d == "bool" else torch.float32) for k, s, d in rows}
    ours, cfg = clipgen_to_ours(state)
    assert cfg == GPTConfig(**{**GPT2_MEDIUM_16384.to_dict(), "dropout": 0.0})
    with torch.device("meta"):
        model = GPT(cfg)
    expected = model.state_dict()
    assert {k: list(v.shape) for k, v in ours.items()} == {k: list(v.shape) for k, v in expected.items()}
    assert sum(p.numel() for p in model.parameters()) == 336_669_696


def test_clipgen_blocks_compute_the_same_as_torch_encoder_layers():
    """Our pre-LN block equals nn.TransformerEncoderLayer(norm_first, gelu) under the mapping."""
    torch.manual_seed(0)
    width, heads, layers, codes, grid, clip_dim = 32, 4, 2, 24, 3, 16
    ref_layers = [torch.nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                                   batch_first=True, norm_first=True).eval() for _ in range(layers)]
    state = {"pos_emb": torch.randn(1, grid * grid, width), "tok_emb.weight": torch.randn(codes, width),
             "cond_proj.weight": torch.randn(width, clip_dim), "cond_proj.bias": torch.randn(width),
             "norm.weight": torch.rand(width) + 0.5, "norm.bias": torch.randn(width),
             "head.weight": torch.randn(codes, width), "head.bias": torch.randn(codes)}
    mask = torch.ones(grid * grid, grid * grid, dtype=torch.bool).triu(1)
    for n, layer in enumerate(ref_layers):
        state[f"blocks.{n}.mask"] = mask
        state.update({f"blocks.{n}.encoder.{k}": v for k, v in layer.state_dict().items()})
    ours, cfg = clipgen_to_ours(state, n_heads=heads)
    model = GPT(cfg).eval()
    model.load_state_dict(ours, strict=True)

    cond = torch.randn(2, clip_dim)
    tokens = torch.randint(0, codes, (2, grid * grid - 1))
    with torch.no_grad():
        x = torch.cat([torch.nn.functional.linear(torch.nn.functional.normalize(cond, dim=-1), state["cond_proj.weight"],
                                                  state["cond_proj.bias"])[:, None], state["tok_emb.weight"][tokens]], 1)
        x = x + state["pos_emb"]
        for layer in ref_layers:
            x = layer(x, src_mask=mask)
        x = torch.nn.functional.layer_norm(x, (width,), state["norm.weight"], state["norm.bias"])
        expected = x @ state["head.weight"].t() + state["head.bias"]
        assert torch.allclose(model(cond, tokens), expected, atol=1e-4)


GUIDED = GPTConfig(n_codes=32, grid=4, width=32, n_layers=2, n_heads=4, clip_dim=16, null_condition=True)


@pytest.fixture
def guided_model():
    torch.manual_seed(0)
    return GPT(GUIDED).eval()


def test_guided_logits_push_away_from_the_null_condition(guided_model):
    """Sampling with guidance s draws from ``u + s * (c - u)``, ``c`` and ``u`` the logits of the
    prompt's condition and of the null one: checked token by token against the full model."""
    model, cond, seeds = guided_model, torch.randn(2, 16), (5, 6)
    tokens = sample(model, cond, _generators(*seeds), guidance=3.0)
    assert tokens.shape == (2, GUIDED.block_size)
    with torch.no_grad():
        prefix = tokens[:, :-1]
        c = model(cond, prefix)
        u = model(cond, prefix, drop=torch.ones(2, dtype=torch.bool))
    gens = _generators(*seeds)
    from studio_clip_gen.gpt import draw

    expected = torch.stack([draw(u[:, i] + 3.0 * (c[:, i] - u[:, i]), gens) for i in range(GUIDED.block_size)], dim=1)
    assert torch.equal(tokens, expected)
    assert torch.equal(sample(model, cond, _generators(*seeds), guidance=3.0, use_cache=False), tokens)
    alone = sample(model, cond[1:], _generators(6), guidance=3.0)
    assert torch.equal(alone[0], tokens[1])  # batch-invariant as without guidance
    assert not torch.equal(sample(model, cond, _generators(*seeds), guidance=1.0), tokens)


def test_guidance_one_is_the_plain_sampler_and_needs_no_null_condition(model, guided_model):
    cond = torch.randn(2, 16)
    # guidance 1 runs the conditional rows alone: a model with a null condition samples as one without
    with torch.no_grad():
        guided_model.null_cond.fill_(1e6)  # were the null rows used at all, this would show
    plain = sample(guided_model, cond, _generators(1, 2))
    assert torch.equal(sample(guided_model, cond, _generators(1, 2), guidance=1.0), plain)
    with pytest.raises(ValueError, match="null condition"):
        sample(model, cond, _generators(1, 2), guidance=2.0)
    with pytest.raises(ValueError, match="null condition"):
        model(cond, drop=torch.ones(2, dtype=torch.bool))


def test_the_null_condition_replaces_only_the_dropped_rows(guided_model):
    cond = torch.randn(3, 16)
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        mixed = guided_model(cond, drop=drop)
        assert torch.allclose(mixed[[0, 2]], guided_model(cond[[0, 2]]), atol=1e-6)
        other = guided_model(torch.randn(1, 16), drop=torch.tensor([True]))
        assert torch.allclose(mixed[1], other[0], atol=1e-6)  # the condition itself no longer matters
