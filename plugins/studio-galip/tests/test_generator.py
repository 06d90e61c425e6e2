"""The sampling contract: seeds, batch invariance, uint8 conversion, failures, conditioning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from studio.generators import GenerationError, Generator, JobCanceled, Request
from studio_galip.generator import GalipGenerator, interpolation_requests, noise_for, to_uint8


def pixels(result) -> np.ndarray:
    return np.asarray(result.image)


@pytest.fixture
def gen(tiny_nets):
    g = GalipGenerator.from_nets(tiny_nets, weights_sha256="abc")
    g.load("cpu")
    return g


def no_progress(done, total):
    pass


def test_is_a_generator(gen):
    assert isinstance(gen, Generator)
    info = gen.describe()
    assert info["weights_sha256"] == "abc" and info["resolution"] == 48 and info["dtype"] == "float32"


def test_noise_is_the_official_numbers():
    torch.manual_seed(7)
    assert torch.equal(noise_for([7], 100), torch.randn(1, 100))
    assert torch.equal(noise_for([3, 7], 100)[1:], noise_for([7], 100))


def test_uint8_conversion_follows_the_contract():
    img = torch.tensor([-2.0, -1.0, 0.0, 0.995, 1.0, 3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    out = to_uint8(img)
    assert out.shape == (1, 1, 6, 3) and out.dtype == torch.uint8
    # (x+1)/2*255 + 0.5 truncated: 0 -> 128 (127.5 + 0.5), 0.995 -> int(254.86) = 254, not 255.
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 254, 255, 255]


def test_same_seed_same_pixels_and_rgb(gen):
    a = gen.generate([Request("a red circle", 5)], no_progress)[0]
    b = gen.generate([Request("a red circle", 5)], no_progress)[0]
    c = gen.generate([Request("a red circle", 6)], no_progress)[0]
    assert a.image.mode == "RGB" and a.image.size == (48, 48)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_batch_of_three_equals_three_single_calls(gen):
    requests = [Request("a red circle", 5), Request("a blue square above a green diamond", 6, index=1),
                Request("word " * 100, 7, index=2)]
    batch = gen.generate(requests, no_progress)
    fresh = GalipGenerator.from_nets(gen.nets)  # no prompt cache shared with the batch call
    fresh.load("cpu")
    singles = [fresh.generate([r], no_progress)[0] for r in requests]
    for a, b in zip(batch, singles):
        assert np.array_equal(pixels(a), pixels(b))


def test_render_puts_networks_back_in_eval_mode(gen):
    """Nets trained in between (training samples) are sampled in eval mode, trunk included."""
    before = pixels(gen.generate([Request("a red circle", 5)], no_progress)[0])
    gen.nets.G.train()
    gen.nets.G.mapping.CLIP_ViT.transformer.resblocks[0].train()
    after = pixels(gen.generate([Request("a red circle", 5)], no_progress)[0])
    assert not any(m.training for m in gen.nets.G.modules())
    assert np.array_equal(before, after)


def test_progress_is_reported_and_cancel_propagates(gen):
    calls = []
    gen.generate([Request("a", 1), Request("b", 2)], lambda d, t: calls.append((d, t)))
    assert calls[-1] == (2, 2) and len(calls) == 2

    def cancel(done, total):
        raise JobCanceled()

    with pytest.raises(JobCanceled):
        gen.generate([Request("a", 1), Request("b", 2)], cancel)


def test_nan_output_fails_the_job(gen):
    with torch.no_grad():
        gen.nets.G.to_rgb[1].bias.fill_(float("nan"))
    with pytest.raises(GenerationError, match="NaN/inf"):
        gen.generate([Request("a red circle", 1)], no_progress)


def test_collapsed_output_fails_the_job(gen):
    with torch.no_grad():
        gen.nets.G.to_rgb[1].weight.zero_()
        gen.nets.G.to_rgb[1].bias.fill_(5.0)  # clamps to all white, as in the official issue #32
    with pytest.raises(GenerationError, match="single-colour"):
        gen.generate([Request("a red circle", 1)], no_progress)


def test_not_loaded_is_a_clear_error(tiny_nets):
    gen = GalipGenerator()
    with pytest.raises(GenerationError, match="not loaded"):
        gen.generate([Request("a", 1)], no_progress)


def test_image_conditioning(gen, tmp_path):
    from studio.api import load_settings, store_input

    picture = tmp_path / "cond.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 60, 3), dtype=np.uint8)).save(picture)
    stored = store_input(load_settings(), str(picture))  # what submit puts in the parameter
    text = gen.generate([Request("a red circle", 3)], no_progress)[0]
    full = gen.generate([Request("a red circle", 3, {"image": stored})], no_progress)[0]
    none = gen.generate([Request("a red circle", 3, {"image": stored, "image_strength": 0.0})], no_progress)[0]
    assert np.array_equal(pixels(text), pixels(none))
    assert not np.array_equal(pixels(text), pixels(full))
    assert full.extra["image_condition"] == stored
    missing = "inputs/" + "0" * 64 + ".png"
    with pytest.raises(GenerationError, match="cannot read conditioning image"):
        gen.generate([Request("x", 1, {"image": missing})], no_progress)


def test_image_conditioning_never_opens_a_path_outside_the_inputs_store(gen, tmp_path):
    """A recipe (an imported PNG's, say) naming a local file never makes the generator open it."""
    picture = tmp_path / "elsewhere.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(picture)
    for value in (str(picture), "../elsewhere.png", "inputs/../../elsewhere.png", "/dev/zero"):
        with pytest.raises(GenerationError, match="not a stored input"):
            gen.generate([Request("x", 1, {"image": value})], no_progress)


def test_interpolation_frames_start_and_end_at_the_keys(gen):
    frames = gen.interpolate(["a red circle", "a blue square"], [1, 2], frames=4)
    assert len(frames) == 5
    first = gen.generate([Request("a red circle", 1)], no_progress)[0]
    last = gen.generate([Request("a blue square", 2)], no_progress)[0]
    assert np.array_equal(np.asarray(frames[0]), pixels(first))
    assert np.array_equal(np.asarray(frames[-1]), pixels(last))
    text_only = gen.interpolate(["a red circle", "a blue square"], [1], frames=2, what="text")
    assert len(text_only) == 3
    with pytest.raises(ValueError):
        gen.interpolate(["one"], [1], frames=2)


def test_interpolation_requests_walk_key_to_key():
    both = interpolation_requests(["a", "b", "c"], [1, 2, 3], frames=2)
    assert [(r.prompt, r.seed, r.params["interp_to"], r.params["interp_seed_to"], r.params["interp_t"], r.index)
            for r in both] == [("a", 1, "b", 2, 0.0, 0), ("a", 1, "b", 2, 0.5, 1),
                               ("b", 2, "c", 3, 0.0, 2), ("b", 2, "c", 3, 0.5, 3), ("b", 2, "c", 3, 1.0, 4)]
    text = interpolation_requests(["a", "b"], [5, 6], frames=1, what="text")
    assert [(r.seed, r.params["interp_to"], r.params["interp_seed_to"]) for r in text] == [(5, "b", -1)] * 2
    noise = interpolation_requests(["a", "b"], [5, 6], frames=1, what="noise")
    assert [(r.prompt, r.params["interp_to"], r.params["interp_seed_to"]) for r in noise] == [("a", "", 6)] * 2
    same_seed = interpolation_requests(["a", "b"], [5], frames=1)
    assert {r.params["interp_seed_to"] for r in same_seed} == {-1}  # nothing to slerp
    with pytest.raises(ValueError, match="noise, text or both"):
        interpolation_requests(["a", "b"], [1], what="colour")


def test_every_frame_is_the_image_of_its_own_request(gen):
    requests = interpolation_requests(["a red circle", "a blue square", "a green diamond"], [1, 2, 4], frames=3)
    frames = gen.interpolate(["a red circle", "a blue square", "a green diamond"], [1, 2, 4], frames=3)
    assert len(frames) == len(requests) == 7
    fresh = GalipGenerator.from_nets(gen.nets)  # no prompt cache shared with the walk
    fresh.load("cpu")
    for request, frame in zip(requests, frames):
        alone = fresh.generate([request], no_progress)[0]
        assert np.array_equal(pixels(alone), np.asarray(frame))
    mixed = fresh.generate([requests[5], Request("a red circle", 9), requests[1]], no_progress)
    assert np.array_equal(pixels(mixed[0]), np.asarray(frames[5]))
    assert np.array_equal(pixels(mixed[2]), np.asarray(frames[1]))
    # The keys themselves (t = 0 of each segment, t = 1 at the end) are plain images.
    for index, prompt, seed in ((0, "a red circle", 1), (3, "a blue square", 2), (6, "a green diamond", 4)):
        plain = gen.generate([Request(prompt, seed)], no_progress)[0]
        assert np.array_equal(np.asarray(frames[index]), pixels(plain)), index
    assert not np.array_equal(np.asarray(frames[1]), np.asarray(frames[0]))


def test_default_interpolation_params_change_nothing(gen):
    idle = {"image": "", "image_strength": 1.0, "interp_to": "", "interp_seed_to": -1, "interp_t": 0.0}
    plain = gen.generate([Request("a red circle", 4)], no_progress)[0]
    same = gen.generate([Request("a red circle", 4, idle)], no_progress)[0]
    assert np.array_equal(pixels(plain), pixels(same)) and "interpolation" not in same.extra
    only_t = gen.generate([Request("a red circle", 4, dict(idle, interp_t=0.5))], no_progress)[0]
    assert np.array_equal(pixels(plain), pixels(only_t))
    moved = gen.generate([Request("a red circle", 4, dict(idle, interp_to="a blue square", interp_t=0.5))],
                         no_progress)[0]
    assert not np.array_equal(pixels(plain), pixels(moved)) and "interpolation" in moved.extra


def test_fast_batched_mode_is_close(tiny_nets):
    gen = GalipGenerator.from_nets(tiny_nets, batch_invariant=False, chunk=8)
    gen.load("cpu")
    requests = [Request("a red circle", s) for s in range(4)]
    batch = gen.generate(requests, no_progress)
    exact = GalipGenerator.from_nets(tiny_nets)
    exact.load("cpu")
    for a, b in zip(batch, exact.generate(requests, no_progress)):
        assert np.abs(pixels(a).astype(int) - pixels(b).astype(int)).max() <= 1


def test_a_repeated_prompt_is_encoded_once_and_the_least_recently_used_leaves(gen, monkeypatch):
    from studio.api import prompt_cache
    from studio_galip import generator as module

    encoded = []
    real = module._encode_prompt
    monkeypatch.setattr(module, "_encode_prompt", lambda clip, prompt: encoded.append(prompt) or real(clip, prompt))
    monkeypatch.setattr(module, "prompt_cache", lambda encode: prompt_cache(encode, size=2))
    fresh = GalipGenerator.from_nets(gen.nets)
    first = fresh.sentence_embeddings(["a red square", "a red square"])
    assert encoded == ["a red square"] and torch.equal(first[0], first[1])
    for prompt in ("a blue circle", "a red square", "a green square"):  # "a blue circle" is now the oldest use
        fresh.sentence_embeddings([prompt])
    fresh.sentence_embeddings(["a red square", "a blue circle"])
    assert encoded == ["a red square", "a blue circle", "a green square", "a blue circle"]
    assert torch.equal(fresh.sentence_embeddings(["a red square"])[0], first[0])


def test_a_generator_built_without_random_init_then_loaded_draws_what_the_original_does(tiny_nets):
    from studio.api import without_random_init
    from studio_galip.model import build_nets

    with without_random_init():
        rebuilt = build_nets(tiny_nets.cfg, tiny_nets.clip, with_d=False)
    rebuilt.G.load_state_dict(tiny_nets.G.state_dict(), strict=True)
    requests = [Request("a red square", 4, {}, 0)]
    original = GalipGenerator.from_nets(tiny_nets).generate(requests, no_progress)
    again = GalipGenerator.from_nets(rebuilt).generate(requests, no_progress)
    assert pixels(again[0]).tobytes() == pixels(original[0]).tobytes()
