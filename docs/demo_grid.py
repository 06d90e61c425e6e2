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


def main(out: Path) -> None:
    settings = load_settings()
    registry = get_registry(settings.load_plugins)
    w, h = len(PROMPTS) * TILE * SCALE, len(MODELS) * (TILE * SCALE + LABEL)
    grid = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for row, model_id in enumerate(MODELS):
        spec = registry.model(model_id)
        generator = generators.get(spec, "cpu")
        values = spec.validate_params({})
        results = generator.generate([Request(p, 0, dict(values), index=i) for i, (p, _o, _r) in enumerate(PROMPTS)],
                                     lambda _d, _t: None)
        for col, ((prompt, objects, relation), result) in enumerate(zip(PROMPTS, results)):
            verdict = checker.check_image(result.image, {"objects": objects, "relation": relation})
            x, y = col * TILE * SCALE, row * (TILE * SCALE + LABEL)
            grid.paste(result.image.convert("RGB").resize((TILE * SCALE, TILE * SCALE), Image.Resampling.NEAREST), (x, y))
            found = ",".join(s or "?" for s in verdict.shapes_guessed)
            draw.text((x + 2, y + TILE * SCALE + 1), f"{model_id}: {found}", fill=(0, 0, 0))
    grid.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("demo-shapes.png"))
