"""Draw the README's emoji grid from the shipped model: ``python docs/demo_emoji.py``.

32 everyday prompts, seed 0, default parameters: exactly what
``studio submit PROMPT --model clip-gen-emoji --seed 0`` makes. Under each tile the prompt, so
the grid can be judged from the pixels alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

from demo_grid import LABEL, SCALE, TILE, draw_defaults, tile  # the shapes grid's script, beside this one

MODEL = "clip-gen-emoji"
PROMPTS = [
    "a cat face", "a dog face", "a red apple", "a pizza", "a red heart", "a rocket", "a snowman", "a ghost",
    "a unicorn", "a robot", "a rainbow", "a strawberry", "a banana", "a panda", "a frog", "an octopus",
    "a watermelon", "a bicycle", "a crown", "a cactus", "a penguin", "a lion", "a beer mug", "a guitar",
    "a smiling face", "a sun", "a pile of poo", "an automobile", "an evergreen tree", "a house", "a crescent moon",
    "a soccer ball",
]
COLUMNS = 8


def main(out: Path) -> None:
    images = draw_defaults(MODEL, PROMPTS)
    rows = -(-len(PROMPTS) // COLUMNS)
    cell_w, cell_h = TILE * SCALE, TILE * SCALE + LABEL
    grid = Image.new("RGB", (COLUMNS * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (prompt, image) in enumerate(zip(PROMPTS, images)):
        x, y = (i % COLUMNS) * cell_w, (i // COLUMNS) * cell_h
        grid.paste(tile(image), (x, y))
        draw.text((x + 2, y + cell_w + 1), prompt.removeprefix("a ").removeprefix("an "), fill=(0, 0, 0))
    grid.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("demo-emoji.png"))
