"""Shared torch code: CLIP configurations and loading, datasets, training and evaluation.

Imported lazily (never when the CLI starts) because it pulls in torch and open_clip. This
package module itself imports neither, so the bundled CLIP's place can be named cheaply.
"""

from pathlib import Path

#: The small CLIP shipped with Studio: every trainer's default ``--clip``.
BUNDLED_CLIP_FILE = Path(__file__).parent / "weights" / "clip-small.safetensors"
#: The architecture name of a file in Studio's bundled small-CLIP format.
BUNDLED_CLIP_ARCH = "studio-bundled"
#: The small CLIP trained on the `emoji` dataset, where installed: what `studio eval --dataset
#: emoji` matches pictures with by default (the shapes CLIP never saw an emoji).
EMOJI_CLIP_FILE = Path(__file__).parent / "weights" / "clip-emoji.safetensors"


def installed_clip_ref(path) -> dict | None:
    """``{"package": "studio.ml", "file": "weights/NAME"}`` when ``path`` is one of the CLIP files
    Studio ships (the shapes one, the emoji one), else None: how a shipped model names a CLIP it
    shares instead of carrying a copy."""
    weights = (Path(__file__).parent / "weights").resolve()
    try:
        resolved = Path(path).resolve()
    except OSError:
        return None
    if resolved.parent != weights or resolved.suffix != ".safetensors" or not resolved.is_file():
        return None
    return {"package": "studio.ml", "file": f"weights/{resolved.name}"}
