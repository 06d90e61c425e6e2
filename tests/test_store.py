import hashlib

import pytest
from PIL import Image

from studio import plumbing, store


def picture(colour=(200, 10, 10), size=8):
    return Image.new("RGB", (size, size), colour)


def test_recipe_round_trip_through_the_png_chunk(tmp_path):
    recipe = {"prompt": "a red circle", "seed": 7, "params": {"steps": 2}, "model": "m"}
    stored = store.save_image(tmp_path, picture(), recipe)
    path = tmp_path / stored.path
    assert store.read_recipe(path) == recipe
    assert hashlib.sha256(path.read_bytes()).hexdigest() == stored.sha256
    assert stored.path == f"images/{stored.sha256[:2]}/{stored.sha256}.png"
    assert (stored.width, stored.height) == (8, 8)


def test_same_pixels_and_recipe_give_one_file(tmp_path):
    a = store.save_image(tmp_path, picture(), {"seed": 1})
    b = store.save_image(tmp_path, picture(), {"seed": 1})
    c = store.save_image(tmp_path, picture(), {"seed": 2})
    assert a == b and a.sha256 != c.sha256
    assert len(list((tmp_path / "images").rglob("*.png"))) == 2


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_fsync(_fd):
        raise OSError("disk full")

    monkeypatch.setattr(plumbing.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        store.save_image(tmp_path, picture(), {})
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_bad_files_are_refused_with_their_name(tmp_path):
    plain = tmp_path / "plain.png"
    picture().save(plain)
    with pytest.raises(store.StoreError, match="no Studio recipe"):
        store.read_recipe(plain)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(store.StoreError, match="garbage.png"):
        store.read_recipe(garbage)
    with pytest.raises(store.StoreError, match="no such file"):
        store.read_recipe(tmp_path / "missing.png")


def test_paths_cannot_escape_the_home(tmp_path):
    assert store.resolve_inside(tmp_path, "images/ab/x.png") == (tmp_path / "images/ab/x.png").resolve()
    for bad in ("../x.png", "/etc/passwd", "images/../../x"):
        with pytest.raises(store.StoreError, match="escapes"):
            store.resolve_inside(tmp_path, bad)
