"""Thumbnails drawn with half blocks: every terminal cell shows two pixels.

The upper half block "▀" takes the top pixel as its foreground colour and the bottom pixel
as its background, which doubles the vertical resolution and works in any terminal with
true colour (rich downgrades the colours elsewhere). Thumbnails are kept in a small LRU
cache keyed by file and size, so paging back and forth does not decode PNGs again.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from PIL import Image
from rich.color import Color
from rich.segment import Segment
from rich.style import Style

from studio import store

UPPER_HALF = "\u2580"
BACKGROUND = (24, 24, 24)
CACHE_SIZE = 512


def fit(width: int, height: int, cols: int, rows: int) -> tuple[int, int]:
    """The pixel size of an image scaled to fit ``cols`` x ``2*rows`` pixels, aspect kept."""
    if width <= 0 or height <= 0:
        return cols, rows * 2
    scale = min(cols / width, rows * 2 / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class Cells:
    """Lines of pre-styled cells: renders by handing rich its segments, with no layout work.

    Thumbnails are drawn many times (every key press redraws the grid), so they are kept in
    this form rather than as rich Text, whose spans would be split into segments each time.
    """

    def __init__(self, lines: list[list[Segment]], width: int) -> None:
        self.lines = lines
        self.width = width

    def __rich_console__(self, console, options):
        for line in self.lines:
            yield from line
            yield Segment.line()

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        return Measurement(self.width, self.width)

    def __str__(self) -> str:
        return "\n".join("".join(s.text for s in line) for line in self.lines)


def halfblock(image: Image.Image, cols: int, rows: int) -> Cells:
    """``image`` as ``rows`` lines of ``cols`` cells, centred on a dark background."""
    w, h = fit(image.width, image.height, cols, rows)
    canvas = Image.new("RGB", (cols, rows * 2), BACKGROUND)
    small = image.convert("RGB").resize((w, h), Image.Resampling.BOX if image.width >= w else Image.Resampling.NEAREST)
    canvas.paste(small, ((cols - w) // 2, (rows * 2 - h) // 2))
    pixels = canvas.load()
    styles: dict[tuple, Style] = {}
    lines = []
    for row in range(rows):
        line = []
        for col in range(cols):
            pair = (pixels[col, 2 * row], pixels[col, 2 * row + 1])
            style = styles.get(pair)
            if style is None:
                style = styles[pair] = Style(color=Color.from_rgb(*pair[0]), bgcolor=Color.from_rgb(*pair[1]))
            line.append(Segment(UPPER_HALF, style))
        lines.append(line)
    return Cells(lines, cols)


def placeholder(label: str, cols: int, rows: int, style: str = "grey50") -> Cells:
    """A box of ``cols`` x ``rows`` cells with ``label`` in the middle (no image to show)."""
    parsed = Style.parse(style)
    lines = []
    for row in range(rows):
        text = label[:cols].center(cols) if row == rows // 2 else " " * cols
        lines.append([Segment(text, parsed)])
    return Cells(lines, cols)


class ThumbnailCache:
    """Half-block thumbnails of stored images, by (path, cols, rows); least recently used go first."""

    def __init__(self, home: Path, size: int = CACHE_SIZE) -> None:
        self.home = home
        self.size = size
        self._items: OrderedDict[tuple[str, int, int], Cells] = OrderedDict()

    def get(self, path: str, cols: int, rows: int) -> Cells:
        key = (path, cols, rows)
        text = self._items.get(key)
        if text is not None:
            self._items.move_to_end(key)
            return text
        text = self._render(path, cols, rows)
        self._items[key] = text
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return text

    def _render(self, path: str, cols: int, rows: int) -> Cells:
        """The thumbnail, drawn only from bytes that hash to the file's name (its sha256)."""
        import hashlib
        import io

        try:
            data = store.resolve_inside(self.home, path).read_bytes()
        except (OSError, ValueError, store.StoreError):
            return placeholder("missing file", cols, rows, "red")
        if hashlib.sha256(data).hexdigest() != Path(path).stem:
            return placeholder("damaged file", cols, rows, "red")
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return halfblock(image, cols, rows)
        except (OSError, ValueError, Image.DecompressionBombError):
            return placeholder("damaged file", cols, rows, "red")
