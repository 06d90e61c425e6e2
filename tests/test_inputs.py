"""Input files (a conditioning image) are stored in the studio home at submit; generators read only those."""

import pytest
from PIL import Image

from studio.engine import Engine
from studio.errors import UsageError
from studio.generators import ModelSpec, Param, Result
from studio.inputs import InputError, resolve_input, store_input


def test_a_file_is_stored_once_by_content_and_only_references_resolve(settings, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.new("RGB", (8, 6), (200, 10, 10)).save(a)
    Image.new("RGB", (8, 6), (200, 10, 10)).save(b, format="BMP")  # another format, same pixels
    ref = store_input(settings, str(a))
    assert ref.startswith("inputs/") and ref.endswith(".png")
    assert store_input(settings, str(b)) == ref  # stored as PNG, named by content
    assert store_input(settings, ref) == ref  # a stored reference passes through (regen)
    stored = resolve_input(settings, ref)
    assert stored.parent == settings.home / "inputs"
    with Image.open(stored) as im:
        assert im.size == (8, 6) and im.getpixel((0, 0)) == (200, 10, 10)
    for bad in (str(a), "inputs/../studio.db", "/etc/passwd", "inputs/" + "f" * 64 + ".png"):
        with pytest.raises(InputError):
            resolve_input(settings, bad)


def test_bad_files_are_one_line_errors(settings, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InputError, match="cannot be read"):
        store_input(settings, str(text))
    with pytest.raises(InputError, match="no such file"):
        store_input(settings, str(tmp_path / "missing.png"))
    assert not (settings.home / "inputs").exists() or not list((settings.home / "inputs").iterdir())


class _Echo:
    def load(self, device):
        pass

    def describe(self):
        return {"model": "echo", "weights_sha256": None}

    def generate(self, requests, progress):
        return [Result(Image.new("RGB", (4, 4))) for _ in requests]


def test_submit_stores_the_image_parameter_and_the_recipe_names_the_stored_copy(settings, tmp_path):
    engine = Engine(settings)
    engine.registry.models["echo"] = ModelSpec(id="echo", plugin="test", factory=_Echo,
                                               params=(Param("image", "image", ""),))
    try:
        source = tmp_path / "cond.png"
        Image.new("RGB", (5, 5), (0, 0, 255)).save(source)
        _, _, _, params = engine.validate("a prompt", "echo", 1, 1, {"image": str(source)})
        assert params["image"].startswith("inputs/")
        source.unlink()  # the job no longer depends on the original file
        assert resolve_input(settings, params["image"]).is_file()
        with pytest.raises(UsageError, match="parameter 'image'.*no such file"):
            engine.validate("a prompt", "echo", 1, 1, {"image": str(source)})
        # no image given: nothing is stored and the default stays
        assert engine.validate("a prompt", "echo", 1, 1, {})[3]["image"] == ""
    finally:
        engine.registry.models.pop("echo")
