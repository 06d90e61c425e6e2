"""The small CLIP trained on `emoji` that ships in the wheel: present, small, and it finds the
concept a held-out phrasing asks for among the dataset's pictures. It is the default judge of
`studio eval --dataset emoji`, so a bad re-export or a preprocessing change that breaks it fails here.
"""

import json

import pytest

from studio.ml import EMOJI_CLIP_FILE, clip_configs

pytest.importorskip("resvg_py", reason="the emoji dataset needs the emoji extra")

from studio.ml import emoji  # noqa: E402
from studio.ml.evaluate_emoji import zero_shot_concepts  # noqa: E402

LIMIT = 200  # concepts rendered for the test: a quick build, still a 1-in-200 choice
# Measured on the shipped file (n=128, seeds 0-2): top-1 0.58-0.62, top-5 0.77-0.82.
FLOOR_TOP1, FLOOR_TOP5 = 0.45, 0.65


@pytest.fixture(scope="module")
def judge():
    assert EMOJI_CLIP_FILE.is_file(), f"{EMOJI_CLIP_FILE} is missing from the package"
    return clip_configs.load_bundled_clip(EMOJI_CLIP_FILE)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return emoji.build(size=64, styles=["twemoji"], cache_dir=tmp_path_factory.mktemp("emoji"), limit=LIMIT, workers=1)


def test_the_emoji_clip_is_small_and_its_card_states_its_held_out_accuracy():
    assert EMOJI_CLIP_FILE.stat().st_size < 6_000_000
    card = json.loads(EMOJI_CLIP_FILE.with_suffix(".json").read_text())
    assert card["data"] == "emoji" and card["steps"] > 0 and card["hardware"]
    assert 0.2 < card["zero_shot"]["concept_top1"] <= card["zero_shot"]["concept_top5"] <= 1
    assert card["zero_shot"]["concepts"] > 3000  # measured against every picture, not a subset


def test_the_emoji_clip_kept_the_rows_of_emoji_words():
    from safetensors import safe_open

    with safe_open(str(EMOJI_CLIP_FILE), framework="pt") as f:
        kept = set(f.get_tensor("token_embedding.ids").tolist())
    words = clip_configs.get_tokenizer()(["a cat face, a slice of pizza, a rocket"]).flatten().tolist()
    assert set(words) <= kept


def test_the_emoji_clip_finds_the_asked_concept_from_unseen_phrasings(judge, data):
    scores = zero_shot_concepts(judge, data, n=128)
    assert scores["concepts"] == LIMIT
    assert scores["concept_top1"] >= FLOOR_TOP1 and scores["concept_top5"] >= FLOOR_TOP5, scores  # chance: 0.005, 0.025
