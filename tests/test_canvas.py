"""Near-blank canvases are told apart from pictures of something, and `studio submit` says so."""

from PIL import Image, ImageDraw
from click.testing import CliRunner

from studio.canvas import inked_share, is_near_blank
from studio.cli import cli
from studio.ml import shapes


def test_empty_and_smudged_canvases_are_blank_and_drawings_are_not():
    assert is_near_blank(Image.new("RGB", (64, 64), (200, 200, 200)))
    smudge = Image.new("RGB", (64, 64), (200, 200, 200))
    ImageDraw.Draw(smudge).ellipse((20, 20, 40, 40), fill=(180, 185, 190))  # a faint grey smudge
    assert is_near_blank(smudge)
    speck = Image.new("RGB", (64, 64), (50, 50, 50))
    ImageDraw.Draw(speck).rectangle((30, 30, 32, 32), fill=(220, 40, 40))  # 9 px: a speck, not a thing
    assert is_near_blank(speck)
    source = shapes.ShapesSource(seed=0, split="eval")
    for i in range(200):  # every dataset drawing holds something, small objects on dark grounds too
        assert not is_near_blank(shapes.render_scene(source.scene(i))), i
    assert 0.0 < inked_share(shapes.render_scene(source.scene(0))) < 0.5


def test_submit_warns_when_a_model_that_draws_things_draws_nothing(monkeypatch, settings):
    from studio.plugins import get_registry
    from studio.generators import ModelSpec, Result

    class Blank:
        def load(self, device):
            pass

        def describe(self):
            return {"model": "blank", "weights_sha256": "1" * 64}

        def generate(self, requests, progress):
            return [Result(Image.new("RGB", (16, 16), (128, 128, 128))) for _ in requests]

    registry = get_registry(settings.load_plugins)
    registry.models["blank-maker"] = ModelSpec(id="blank-maker", plugin="test", factory=Blank, draws="coloured shapes")
    registry.models["plain-field"] = ModelSpec(id="plain-field", plugin="test", factory=Blank)
    try:
        result = CliRunner().invoke(cli, ["submit", "a red circle", "-m", "blank-maker"])
        assert result.exit_code == 0, result.output
        assert "near-blank canvas" in result.output
        quiet = CliRunner().invoke(cli, ["submit", "a red circle", "-m", "plain-field"])
        assert quiet.exit_code == 0 and "near-blank" not in quiet.output
    finally:
        registry.models.pop("blank-maker")
        registry.models.pop("plain-field")
