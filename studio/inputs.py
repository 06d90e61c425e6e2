"""Files a job reads (a conditioning image): copied into ``<home>/inputs`` when the job is submitted.

A path typed on the command line never reaches a generator. A worker on another machine could not
read it anyway, a recipe naming a file elsewhere stops being re-playable once that file changes,
and a generator that opens any path it is given reads files outside the studio home. So an
``image`` parameter is checked (a readable image within the size limit), stored once as a PNG
named by its sha256, and the parameter holds ``inputs/<sha256>.png``; generators open only such
references, through :func:`resolve_input`.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from pathlib import Path

from studio.config import Settings
from studio.errors import InputError
from studio.plumbing import one_line, write_atomic

INPUTS_DIR = "inputs"
#: Larger images are refused before decoding (decompression bombs); conditioning needs far less.
MAX_PIXELS = 4096 * 4096
_REFERENCE = re.compile(r"^inputs/[0-9a-f]{64}\.png$")




def is_reference(value: str) -> bool:
    return bool(_REFERENCE.match(value))


def store_input(settings: Settings, value: str) -> str:
    """The ``inputs/<sha256>.png`` reference for ``value`` (a file path, or already a reference)."""
    if is_reference(value):
        resolve_input(settings, value)
        return value
    png = _as_png(Path(value).expanduser(), value)
    digest = hashlib.sha256(png).hexdigest()
    folder = settings.home / INPUTS_DIR
    target = folder / f"{digest}.png"
    if not target.is_file():
        write_atomic(target, png)
    return f"{INPUTS_DIR}/{digest}.png"


def resolve_input(settings: Settings, value: str) -> Path:
    """The stored file of a reference; anything else (a path, ``..``) is refused."""
    if not is_reference(value):
        raise InputError(f"input {value!r} is not a stored input (inputs/<sha256>.png); submit the file through Studio")
    path = settings.home / value
    if not path.is_file():
        raise InputError(f"input {value} is missing from the studio home ({settings.home})")
    return path


def _as_png(path: Path, shown: str) -> bytes:
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise InputError(f"image {shown!r}: no such file")
    if not path.is_file():  # a FIFO, a device, a folder: never opened (a FIFO would block the job)
        raise InputError(f"image {shown!r}: not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise InputError(f"image {shown!r} is {im.width}x{im.height}; the limit is {MAX_PIXELS} pixels")
                rgb = im.convert("RGB")
    except InputError:
        raise
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image {shown!r} cannot be read: {one_line(exc)}") from None
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()
