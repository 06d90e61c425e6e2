"""The one place that writes and reads image files.

Files are content-addressed (``images/ab/abcdef....png``, the sha256 of the PNG bytes) and
written to a temporary name then renamed, so a crash never leaves half a file. The full
recipe travels inside the PNG as a text chunk named ``studio`` (JSON), so a file alone is
enough to re-generate or import an image.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from studio.errors import StoreError
from studio.plumbing import one_line, write_atomic

RECIPE_CHUNK = "studio"




@dataclass(frozen=True)
class StoredFile:
    sha256: str
    path: str  # relative to the studio home, with forward slashes
    width: int
    height: int


def encode_png(image: Image.Image, recipe: dict[str, Any]) -> bytes:
    """PNG bytes with the recipe embedded. Deterministic: same pixels and recipe, same bytes."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_CHUNK, json.dumps(recipe, sort_keys=True, separators=(",", ":")), zip=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, optimize=False, compress_level=6)
    return buffer.getvalue()


def relative_path(sha256: str) -> str:
    return f"images/{sha256[:2]}/{sha256}.png"


def save_image(home: Path, image: Image.Image, recipe: dict[str, Any]) -> StoredFile:
    """Store one image under ``home``; storing the same bytes twice keeps one file."""
    data = encode_png(image, recipe)
    digest = hashlib.sha256(data).hexdigest()
    rel = relative_path(digest)
    target = home / rel
    if not (target.is_file() and target.stat().st_size == len(data)):
        write_atomic(target, data, fsync=True)
    return StoredFile(sha256=digest, path=rel, width=image.width, height=image.height)


def read_recipe(path: Path) -> dict[str, Any]:
    """The recipe stored in a PNG; StoreError if the file is not a PNG with a Studio recipe."""
    try:
        with Image.open(path) as img:
            img.load()
            text = getattr(img, "text", {}).get(RECIPE_CHUNK)
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable image ({exc})") from None
    if text is None:
        raise StoreError(f"{path}: no Studio recipe in this PNG (text chunk {RECIPE_CHUNK!r} missing)")
    try:
        recipe = json.loads(text)
    except ValueError:
        raise StoreError(f"{path}: the Studio recipe is not valid JSON") from None
    if not isinstance(recipe, dict):
        raise StoreError(f"{path}: the Studio recipe is not a JSON object")
    return recipe


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_inside(home: Path, relative: str) -> Path:
    """Resolve a stored relative path, refusing anything that escapes the home."""
    root = home.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise StoreError(f"path {relative!r} escapes the studio home")
    return target


def parse_png(data: bytes, name: str) -> tuple[dict[str, Any], int, int]:
    """(recipe, width, height) of PNG bytes that arrived from outside (an import).

    Like :func:`read_recipe` but for bytes, and stricter: the data must be a PNG whose pixels
    decode completely, so a truncated or corrupt file is refused before anything is stored.
    """
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise StoreError(f"{name}: not a PNG file")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            img.load()
            text = getattr(img, "text", {}).get(RECIPE_CHUNK)
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = one_line(exc)
        raise StoreError(f"{name}: not a readable PNG ({reason})") from None
    if text is None:
        raise StoreError(f"{name}: no Studio recipe in this PNG (text chunk {RECIPE_CHUNK!r} missing)")
    try:
        recipe = json.loads(text)
    except ValueError:
        raise StoreError(f"{name}: the Studio recipe is not valid JSON") from None
    if not isinstance(recipe, dict):
        raise StoreError(f"{name}: the Studio recipe is not a JSON object")
    return recipe, width, height


def save_png_bytes(home: Path, data: bytes, width: int, height: int) -> tuple[StoredFile, bool]:
    """Store PNG bytes exactly as given (an import keeps the original sha256).

    Returns the stored file and whether this call created it, so a failed import can remove
    exactly the files it added and nothing that was there before.
    """
    digest = hashlib.sha256(data).hexdigest()
    rel = relative_path(digest)
    target = home / rel
    created = not (target.is_file() and target.stat().st_size == len(data))
    if created:
        write_atomic(target, data)
    return StoredFile(sha256=digest, path=rel, width=width, height=height), created
