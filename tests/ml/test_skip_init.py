"""Building without random weights: nothing drawn inside, everything restored after."""

import pytest
import torch

from studio.ml.skip_init import without_random_init


def test_no_random_numbers_are_drawn_inside_and_init_is_back_after():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with without_random_init():
        torch.nn.Linear(64, 64)
        torch.nn.Embedding(100, 8)
    assert torch.equal(torch.get_rng_state(), before)  # no draw consumed the generator
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 4).weight
    torch.manual_seed(0)
    assert torch.equal(a, torch.nn.Linear(4, 4).weight) and a.abs().sum() > 0


def test_init_works_again_after_a_failed_construction_and_on_other_threads_meanwhile():
    import threading

    with pytest.raises(RuntimeError, match="boom"):
        with without_random_init():
            raise RuntimeError("boom")
    torch.manual_seed(0)
    after = torch.nn.Linear(4, 4).weight.detach().clone()
    torch.manual_seed(0)
    with without_random_init():
        built = {}
        worker = threading.Thread(target=lambda: built.setdefault("w", torch.nn.init.ones_(torch.empty(3))))
        worker.start()
        worker.join()
        assert torch.equal(built["w"], torch.ones(3))  # another thread still initialises
        assert not torch.equal(torch.nn.init.ones_(torch.zeros(3)), torch.ones(3))  # this one does not
    torch.manual_seed(0)
    assert torch.equal(torch.nn.Linear(4, 4).weight, after)


def test_the_bundled_clip_loads_the_same_weights_built_either_way(monkeypatch):
    from studio.ml import BUNDLED_CLIP_FILE, clip_configs, skip_init

    fast = clip_configs.load_bundled_clip(BUNDLED_CLIP_FILE)
    monkeypatch.setattr(skip_init, "_skipping", lambda: False)  # the context then changes nothing
    slow = clip_configs.load_bundled_clip(BUNDLED_CLIP_FILE)
    a, b = fast.state_dict(), slow.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tokens = clip_configs.get_tokenizer("studio-tiny-64-avg")(["a red circle"])
    with torch.no_grad():
        assert torch.equal(fast.encode_text(tokens), slow.encode_text(tokens))
        x = torch.rand(2, 3, 64, 64)
        assert torch.equal(fast.encode_image(x), slow.encode_image(x))
