"""The one place that writes and reads image files.

Files are content-addressed (``images/ab/abcdef....png``, the sha256 of the PNG bytes) and
written to a temporary name then renamed, so a crash never leaves half a file. The full
recipe travels inside the PNG as a text chunk named ``studio`` (JSON), so a file alone is
enough to re-generate or import an image.

Other tools read other conventions, so the same facts are also written for them (never read
back by Studio: the ``studio`` chunk is the recipe):

- ``parameters``: the de-facto text chunk of AUTOMATIC1111's web UI, which its "PNG Info",
  ComfyUI, InvokeAI, image hosts and exiftool read: the prompt, then one line of
  ``Key: value`` pairs (``Steps``, ``Sampler``, ``Seed``, ``Size``, ``Model hash``, ``Model``,
  then Studio's own fields, with values that hold commas JSON-quoted);
- ``Software`` and ``Description``, keywords of the PNG specification (``Description``: the prompt).

Files made before these chunks existed hold only the ``studio`` chunk (format 1);
:func:`format_digests` gives the sha256 a new file would have had in that format, so an old
image still verifies bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from studio.errors import StoreError
from studio.plumbing import one_line, write_atomic

RECIPE_CHUNK = "studio"
PARAMETERS_CHUNK = "parameters"
#: 1: the ``studio`` chunk alone; 2: plus ``parameters``, ``Software`` and ``Description``.
PNG_FORMAT = 2

#: The largest image an import accepts (width x height), checked before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 4096 * 4096




@dataclass(frozen=True)
class StoredFile:
    sha256: str
    path: str  # relative to the studio home, with forward slashes
    width: int
    height: int


def recipe_text(recipe: dict[str, Any]) -> str:
    """The exact text of the ``studio`` chunk for a recipe."""
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"))


def encode_png(image: Image.Image, recipe: dict[str, Any], png_format: int = PNG_FORMAT) -> bytes:
    """PNG bytes with the recipe embedded. Deterministic: same pixels and recipe, same bytes."""
    return _encode(image, recipe_text(recipe), recipe, png_format)


def _encode(image: Image.Image, text: str, recipe: dict[str, Any], png_format: int) -> bytes:
    if image.mode != "RGB":
        image = image.convert("RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_CHUNK, text, zip=True)
    if png_format >= 2:
        info.add_text(PARAMETERS_CHUNK, parameters_text(recipe, image.width, image.height))
        info.add_text("Software", f"Studio {recipe.get('core_version') or ''}".strip())
        info.add_text("Description", str(recipe.get("prompt", "")))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, optimize=False, compress_level=6)
    return buffer.getvalue()


def _quote(value: Any) -> str:
    """A value of the ``parameters`` line: JSON-quoted when it holds what would split the line."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    if any(ch in text for ch in ',:"\n') or text != text.strip():
        return json.dumps(text)
    return text


def parameters_text(recipe: dict[str, Any], width: int, height: int) -> str:
    """The ``parameters`` chunk: the prompt, then the ``Steps: .., Sampler: .., Seed: ..`` line."""
    params = dict(recipe.get("params") or {})
    generator = recipe.get("generator") or {}
    weights = recipe.get("weights_sha256") or ""
    fields: list[tuple[str, Any]] = [
        ("Steps", params.get("steps", generator.get("steps", 1))),
        ("Sampler", generator.get("sampler") or recipe.get("plugin") or recipe.get("model")),
        ("Seed", recipe.get("seed")),
        ("Size", f"{width}x{height}"),
    ]
    if weights:
        fields.append(("Model hash", weights[:10]))
    fields += [
        ("Model", recipe.get("model")),
        ("Version", f"Studio {recipe.get('core_version') or ''}".strip()),
        ("Studio plugin", f"{recipe.get('plugin') or ''} {recipe.get('plugin_version') or ''}".strip()),
        ("Studio device", recipe.get("device")),
        ("Studio dtype", recipe.get("dtype")),
    ]
    if weights:
        fields.append(("Studio weights sha256", weights))
    if params:
        fields.append(("Studio params", params))
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in fields if value not in (None, ""))
    prompt = " ".join(str(recipe.get("prompt", "")).splitlines())  # one line: the reader splits on lines
    return f"{prompt}\n{line}"


def format_digests(data: bytes) -> set[str]:
    """The sha256 of these PNG bytes and of the same image and recipe in every earlier format.

    An image made before the interop chunks were written compares with its re-run through
    this: same pixels and same ``studio`` chunk give the same bytes in that format.
    """
    digests = {hashlib.sha256(data).hexdigest()}
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            img.load()
            text = getattr(img, "text", {}).get(RECIPE_CHUNK)
            pixels = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return digests
    if text is None:
        return digests
    try:
        recipe = json.loads(text)
    except ValueError:
        return digests
    for png_format in range(1, PNG_FORMAT + 1):
        digests.add(hashlib.sha256(_encode(pixels, text, recipe, png_format)).hexdigest())
    return digests


def relative_path(sha256: str) -> str:
    return f"images/{sha256[:2]}/{sha256}.png"


def save_image(home: Path, image: Image.Image, recipe: dict[str, Any]) -> StoredFile:
    """Store one image under ``home``; storing the same bytes twice keeps one file."""
    data = encode_png(image, recipe)
    digest = hashlib.sha256(data).hexdigest()
    rel = relative_path(digest)
    put_bytes(home, rel, digest, data, fsync=True)
    return StoredFile(sha256=digest, path=rel, width=image.width, height=image.height)


# ---- integrity: a stored file is trusted only once its bytes hash to its name -------------------

#: What :func:`file_state` finds: the bytes hash to the name, they do not, or there is no file.
OK, DAMAGED, MISSING = "ok", "damaged", "missing"


def file_state(home: Path, relative: str, sha256: str) -> str:
    """Whether the stored file of an image row is intact: ``ok``, ``damaged`` or ``missing``.

    Size says nothing (a byte flipped in place keeps it); only the sha256 of the bytes, which
    is the file's name, does. A path that escapes the home, or is not a regular file, is missing.
    """
    try:
        path = resolve_inside(home, relative)
    except StoreError:
        return MISSING
    try:
        if not path.is_file():
            return MISSING
        return OK if file_sha256(path) == sha256 else DAMAGED
    except OSError:
        return MISSING


def read_verified(home: Path, relative: str, sha256: str) -> bytes:
    """The bytes of a stored file, only when they hash to ``sha256``; StoreError otherwise.

    Reads once and hashes what was read, so what a caller writes elsewhere (an export) is
    exactly what was checked.
    """
    path = resolve_inside(home, relative)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{relative}: the stored file is missing; `studio check --repair` can remake it") from None
    except OSError as exc:
        raise StoreError(f"{relative}: the stored file cannot be read ({exc.strerror or one_line(exc)})") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise StoreError(f"{relative}: the stored file is damaged (its bytes do not hash to its name); "
                         f"`studio check --repair` can remake it")
    return data


def put_bytes(home: Path, relative: str, sha256: str, data: bytes, *, fsync: bool = False) -> str:
    """Make ``home/relative`` hold ``data`` (whose sha256 is ``sha256``); returns what happened:
    ``kept`` (an intact file was there), ``repaired`` (a damaged one was replaced) or ``created``.

    A file already there is kept only after its bytes hash to its name: a file of the right
    size with a flipped byte, or a truncated one, is rewritten from ``data``.
    """
    target = resolve_inside(home, relative)
    state = file_state(home, relative, sha256)
    if state == OK:
        return "kept"
    write_atomic(target, data, fsync=fsync)
    return "repaired" if state == DAMAGED else "created"


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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:  # before a single pixel is decoded
                    raise StoreError(f"{name}: {img.width}x{img.height} pixels; the limit is {MAX_IMAGE_PIXELS} pixels")
                img.load()
                text = getattr(img, "text", {}).get(RECIPE_CHUNK)
                width, height = img.size
    except StoreError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
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
    state = put_bytes(home, rel, digest, data)
    return StoredFile(sha256=digest, path=rel, width=width, height=height), state == "created"
