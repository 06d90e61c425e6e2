"""Draw the README's demo grid from the shipped models: ``python docs/demo_grid.py``.

One row per bundled model, one column per prompt, seed 0, default parameters: exactly what
``studio submit PROMPT --model MODEL --seed 0`` makes. Under each tile the pixel judge's verdict
(``studio.ml.checker``): the shape it found, or ``?`` when no shape fits clearly.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

from studio.config import load_settings
from studio.generators import Request
from studio.loader import generators
from studio.ml import checker
from studio.plugins import get_registry

PROMPTS = [
    ("a red circle", [{"colour": "red", "shape": "circle"}], None),
    ("a blue square", [{"colour": "blue", "shape": "square"}], None),
    ("a yellow triangle on a dark background", [{"colour": "yellow", "shape": "triangle"}], None),
    ("a green diamond", [{"colour": "green", "shape": "diamond"}], None),
    ("a small purple circle", [{"colour": "purple", "shape": "circle"}], None),
    ("a red circle above a blue square", [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}], "above"),
]
MODELS = ("galip", "clip-gen")
TILE, LABEL, SCALE = 64, 14, 2


def draw_defaults(model_id: str, prompts: list[str]) -> list[Image.Image]:
    """What ``studio submit PROMPT --model MODEL --seed 0`` makes for each prompt, in one batch."""
    settings = load_settings()
    spec = get_registry(settings.load_plugins).model(model_id)
    generator = generators.get(spec, "cpu")
    values = spec.validate_params({})
    results = generator.generate([Request(p, 0, dict(values), index=i) for i, p in enumerate(prompts)],
                                 lambda _d, _t: None)
    return [result.image for result in results]


def tile(image: Image.Image) -> Image.Image:
    """A generated image enlarged for the grid, pixels kept sharp."""
    return image.convert("RGB").resize((TILE * SCALE, TILE * SCALE), Image.Resampling.NEAREST)


def main(out: Path) -> None:
    w, h = len(PROMPTS) * TILE * SCALE, len(MODELS) * (TILE * SCALE + LABEL)
    grid = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for row, model_id in enumerate(MODELS):
        images = draw_defaults(model_id, [prompt for prompt, _o, _r in PROMPTS])
        for col, ((_prompt, objects, relation), image) in enumerate(zip(PROMPTS, images)):
            verdict = checker.check_image(image, {"objects": objects, "relation": relation})
            x, y = col * TILE * SCALE, row * (TILE * SCALE + LABEL)
            grid.paste(tile(image), (x, y))
            found = ",".join(s or "?" for s in verdict.shapes_guessed)
            draw.text((x + 2, y + TILE * SCALE + 1), f"{model_id}: {found}", fill=(0, 0, 0))
    grid.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("demo-shapes.png"))
