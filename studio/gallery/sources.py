"""Where imported images come from, read defensively: loose PNGs, export folders, zip files.

An import never extracts anything to a path taken from its input: bytes are read by name and
stored under their sha256. Names are still checked, and an archive or folder with an entry
that would escape it (``..``, an absolute name, a drive letter, a symbolic link) is refused as
a whole, because such an entry means the input was made to attack, not by ``studio export``.
"""

from __future__ import annotations

import json
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from studio.store import StoreError

MANIFEST = "manifest.json"
EXPORT_FORMAT = "studio-export"
MAX_FILE_BYTES = 256 * 1024 * 1024  # one image; far above any real one
MAX_ENTRIES = 1_000_000


@dataclass(frozen=True)
class Candidate:
    """One PNG to import: a name for messages, how to read it, and what the manifest says."""

    name: str
    read: Callable[[], bytes]
    meta: dict[str, Any]  # the manifest entry, or {} for a loose PNG


def safe_member(name: str, where: str) -> str:
    """A relative name that stays inside its folder, with forward slashes; StoreError otherwise."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise StoreError(f"{where}: an entry has an empty or invalid name; refused")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise StoreError(f"{where}: entry {name!r} is an absolute path; refused")
    parts = PurePosixPath(unified).parts
    if ".." in parts:
        raise StoreError(f"{where}: entry {name!r} escapes the folder ('..'); refused")
    return "/".join(p for p in parts if p != ".")


def _read_limited(handle, name: str, limit: int = MAX_FILE_BYTES) -> bytes:
    data = handle.read(limit + 1)
    if len(data) > limit:
        raise StoreError(f"{name}: larger than {limit // (1024 * 1024)} MiB; refused")
    return data


def _manifest(data: bytes, where: str) -> list[dict[str, Any]]:
    try:
        manifest = json.loads(data)
    except ValueError:
        raise StoreError(f"{where}: {MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise StoreError(f"{where}: {MANIFEST} is not a Studio export manifest")
    images = manifest.get("images")
    if not isinstance(images, list) or not all(isinstance(i, dict) and isinstance(i.get("file"), str) for i in images):
        raise StoreError(f"{where}: {MANIFEST} has no valid list of images")
    return images


# ---- zip ---------------------------------------------------------------------------------


def _check_zip_entry(info: zipfile.ZipInfo, where: str) -> str:
    name = safe_member(info.filename, where)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise StoreError(f"{where}: entry {info.filename!r} is a symbolic link; refused")
    if info.file_size > MAX_FILE_BYTES and not info.is_dir():
        raise StoreError(f"{where}: entry {info.filename!r} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; refused")
    return name


def zip_candidates(path: Path) -> Iterator[Candidate]:
    where = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise StoreError(f"{where}: not a readable zip file ({exc})") from None
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise StoreError(f"{where}: more than {MAX_ENTRIES} entries; refused")
    members = {}
    for info in infos:
        name = _check_zip_entry(info, where)  # every entry, used or not: a bad one taints the archive
        if not info.is_dir():
            members[name] = info

    def reader(info: zipfile.ZipInfo, label: str) -> Callable[[], bytes]:
        def read() -> bytes:
            try:
                with archive.open(info) as handle:
                    return _read_limited(handle, label)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise StoreError(f"{label}: cannot be read from the archive ({exc})") from None

        return read

    if MANIFEST in members:
        entries = _manifest(reader(members[MANIFEST], f"{where}:{MANIFEST}")(), where)
        for meta in entries:
            name = safe_member(meta["file"], f"{where}:{MANIFEST}")
            if name not in members:
                raise StoreError(f"{where}: {MANIFEST} lists {meta['file']!r}, which is not in the archive")
            yield Candidate(f"{where}:{name}", reader(members[name], f"{where}:{name}"), meta)
        return
    for name in sorted(members):
        if name.lower().endswith(".png"):
            yield Candidate(f"{where}:{name}", reader(members[name], f"{where}:{name}"), {})


# ---- folders and files ---------------------------------------------------------------------


def _inside(folder: Path, relative: str, where: str) -> Path:
    """``folder/relative`` if it is a regular file inside ``folder`` reached without symlinks."""
    target = folder / relative
    current = folder
    for part in PurePosixPath(relative).parts:
        current = current / part
        if current.is_symlink():
            raise StoreError(f"{where}: {relative!r} is a symbolic link; refused")
    root = folder.resolve()
    if root not in target.resolve().parents:
        raise StoreError(f"{where}: {relative!r} escapes the folder; refused")
    if not target.is_file():
        raise StoreError(f"{where}: {relative!r} is missing or not a file")
    return target


def _file_reader(path: Path, label: str) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with open(path, "rb") as handle:
                return _read_limited(handle, label)
        except OSError as exc:
            raise StoreError(f"{label}: cannot be read ({exc.strerror or exc})") from None

    return read


def folder_candidates(folder: Path) -> Iterator[Candidate]:
    where = str(folder)
    manifest = folder / MANIFEST
    if manifest.is_symlink():
        raise StoreError(f"{where}: {MANIFEST} is a symbolic link; refused")
    if manifest.is_file():
        entries = _manifest(_file_reader(manifest, str(manifest))(), where)
        for meta in entries:
            name = safe_member(meta["file"], str(manifest))
            path = _inside(folder, name, where)
            yield Candidate(str(path), _file_reader(path, str(path)), meta)
        return
    for path in sorted(folder.iterdir()):
        if path.name.lower().endswith(".png"):
            _inside(folder, path.name, where)
            yield Candidate(str(path), _file_reader(path, str(path)), {})


def candidates(path: Path) -> Iterator[Candidate]:
    """The PNGs to import from one command-line path: a PNG, an export folder or a zip."""
    if not path.exists():
        raise StoreError(f"{path}: no such file or folder")
    if path.is_dir():
        yield from folder_candidates(path)
    elif zipfile.is_zipfile(path):
        yield from zip_candidates(path)
    else:
        yield Candidate(str(path), _file_reader(path, str(path)), {})
