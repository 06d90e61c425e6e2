"""Folder datasets: the images with captions that real users bring.

Three layouts are read, in this order of precedence:

* ``captions.jsonl``: one JSON object per line with ``file`` (or ``image``) and ``caption``
  (or ``text``);
* ``captions.csv``: a header row with the same column names;
* pairs ``NAME.png`` (any Pillow-readable extension) + ``NAME.txt``.

A pair that cannot be used (missing image, unreadable image, empty caption, bad line) is
reported with its file name through :mod:`logging` and a :class:`UserWarning`, then skipped:
one bad file must never end a long training run. Images are decoded once when the folder is
opened (the check) and again on access, so a file that breaks later is also skipped.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


class FolderDatasetError(ValueError):
    """A folder that gives no usable pair at all; the message is one line naming the folder."""


@dataclass(frozen=True)
class Pair:
    image: Path
    caption: str


@dataclass
class FolderSource:
    """The usable ``(image, caption)`` pairs of a folder; ``skipped`` lists what was dropped."""

    root: Path
    pairs: list[Pair]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[Image.Image, str]:
        """The RGB image and caption of pair ``index`` (raises ``OSError`` if it broke since)."""
        pair = self.pairs[index]
        with Image.open(pair.image) as im:
            return im.convert("RGB"), pair.caption


def report_skip(path: Path | str, reason: str, skipped: list) -> None:
    message = f"skipping {path}: {reason}"
    log.warning(message)
    warnings.warn(message, stacklevel=3)
    skipped.append((str(path), reason))


def open_folder(root: str | Path, verify: bool = True) -> FolderSource:
    """Scan ``root`` for pairs; raise :class:`FolderDatasetError` if none is usable."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FolderDatasetError(f"dataset folder {root} does not exist or is not a folder")
    skipped: list[tuple[str, str]] = []
    if (root / "captions.jsonl").is_file():
        candidates = _from_jsonl(root, skipped)
    elif (root / "captions.csv").is_file():
        candidates = _from_csv(root, skipped)
    else:
        candidates = _from_pairs(root, skipped)
    pairs = [p for p in candidates if not verify or _readable(p, skipped)]
    if not pairs:
        detail = f" ({len(skipped)} skipped, first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise FolderDatasetError(f"dataset folder {root} has no readable image/caption pairs{detail}")
    return FolderSource(root, pairs, skipped)


def _readable(pair: Pair, skipped: list) -> bool:
    try:
        with Image.open(pair.image) as im:
            im.verify()
        return True
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        report_skip(pair.image, f"unreadable image ({type(exc).__name__})", skipped)
        return False


def _from_pairs(root: Path, skipped: list) -> list[Pair]:
    pairs = []
    for image in sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        text = image.with_suffix(".txt")
        if not text.is_file():
            report_skip(image, f"no caption file {text.name}", skipped)
            continue
        caption = _read_text(text, skipped)
        if caption:
            pairs.append(Pair(image, caption))
    return pairs


def _read_text(path: Path, skipped: list) -> str | None:
    try:
        caption = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        report_skip(path, f"unreadable caption ({type(exc).__name__})", skipped)
        return None
    if not caption:
        report_skip(path, "empty caption", skipped)
        return None
    return " ".join(caption.split())


def _row_pair(root: Path, row: dict, where: str, skipped: list) -> Pair | None:
    name = row.get("file") or row.get("image") or row.get("file_name")
    caption = row.get("caption") or row.get("text")
    if not isinstance(name, str) or not isinstance(caption, str) or not caption.strip():
        report_skip(where, "needs a file name and a non-empty caption", skipped)
        return None
    image = (root / name).resolve()
    if not image.is_file():
        report_skip(root / name, "image file not found", skipped)
        return None
    return Pair(image, " ".join(caption.split()))


def _from_jsonl(root: Path, skipped: list) -> list[Pair]:
    pairs = []
    path = root / "captions.jsonl"
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            report_skip(where, "not valid JSON", skipped)
            continue
        pair = _row_pair(root, row, where, skipped) if isinstance(row, dict) else None
        if pair is None and not isinstance(row, dict):
            report_skip(where, "not a JSON object", skipped)
        if pair:
            pairs.append(pair)
    return pairs


def _from_csv(root: Path, skipped: list) -> list[Pair]:
    pairs = []
    path = root / "captions.csv"
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        for number, row in enumerate(csv.DictReader(f), start=2):
            pair = _row_pair(root, row, f"{path}:{number}", skipped)
            if pair:
                pairs.append(pair)
    return pairs
