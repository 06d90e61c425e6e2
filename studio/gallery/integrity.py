"""``studio check``: does every stored file still hold the bytes its name promises?

Files are named by the sha256 of their bytes, so a file is intact exactly when its bytes hash
to its name; its size, its date or whether it still decodes say nothing. The check reads the
whole store once:

- every image row's file: ``ok``, ``damaged`` (the bytes hash to something else: a flipped byte,
  a truncation, bytes appended, another picture copied over it) or ``missing``;
- every file under ``images/`` that no row uses (``orphan``), and temporary files an interrupted
  write left behind (``temp``).

With ``repair``, a damaged or missing file is made again from its recipe, here, with the model
that made it, and written only when the new bytes hash to the file's name: a repair never
writes anything but the original bytes. Orphans and temporary files older than
:data:`GRACE_S` are removed (a younger one may belong to a job that is writing its files
right now: files are written before their rows).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select

from studio import store
from studio.db import Image
from studio.engine import Engine
from studio.plumbing import one_line

#: Orphans and temporary files younger than this are left alone: a running job writes its files
#: first and records their rows when it ends.
GRACE_S = 3600

Progress = Callable[[int, int], None]


@dataclass
class Problem:
    """One finding: ``kind`` is damaged, missing, orphan or temp; ``path`` is relative to the home."""

    kind: str
    path: str
    sha256: str | None = None
    image_ids: list[str] = field(default_factory=list)
    repaired: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Report:
    files: int = 0  # files read and hashed
    rows: int = 0  # image rows checked
    problems: list[Problem] = field(default_factory=list)

    @property
    def left(self) -> list[Problem]:
        """The problems still there (not repaired)."""
        return [p for p in self.problems if not p.repaired]

    @property
    def ok(self) -> bool:
        return not self.left

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "files": self.files, "rows": self.rows,
                "problems": [p.as_dict() for p in self.problems]}


def stored_files(home: Path) -> list[str]:
    """Every regular file under ``images/``, relative to the home with forward slashes."""
    root = home / "images"
    if not root.is_dir():
        return []
    return sorted(p.relative_to(home).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def check_store(engine: Engine, *, repair: bool = False, progress: Progress | None = None) -> Report:
    """Check (and with ``repair``, mend) every stored file; see the module's text."""
    home = engine.settings.home
    report = Report()
    with engine.db.session() as session:
        rows = session.execute(select(Image.id, Image.sha256, Image.path)).all()
    used: dict[str, tuple[str, list[str]]] = {}
    for image_id, sha, path in rows:
        used.setdefault(path, (sha, []))[1].append(image_id)
    report.rows = len(rows)
    extra = [path for path in stored_files(home) if path not in used]
    total = len(used) + len(extra)
    done = 0
    for path, (sha, ids) in used.items():
        state = store.file_state(home, path, sha)
        report.files += state != store.MISSING
        if state != store.OK:
            report.problems.append(Problem(state, path, sha, sorted(ids)))
        done += 1
        if progress:
            progress(done, total)
    for path in extra:
        name = Path(path).name
        report.problems.append(Problem("temp" if name.startswith(".") else "orphan", path))
        report.files += 1
        done += 1
        if progress:
            progress(done, total)
    if repair:
        for problem in report.problems:
            if problem.kind in (store.DAMAGED, store.MISSING):
                _remake(engine, problem)
            else:
                _remove_stray(home, problem)
    return report


def _remove_stray(home: Path, problem: Problem) -> None:
    path = home / problem.path
    try:
        age = time.time() - path.lstat().st_mtime
    except OSError:
        problem.repaired, problem.note = True, "gone meanwhile"
        return
    if age < GRACE_S:
        problem.note = f"younger than {GRACE_S // 60} min (a job may be writing it); left"
        return
    try:
        path.unlink()
    except OSError as exc:
        problem.note = f"cannot remove: {exc.strerror or one_line(exc)}"
        return
    problem.repaired, problem.note = True, "removed"


def _remake(engine: Engine, problem: Problem) -> None:
    """Make the file again from the recipe of one of its rows; written only if it hashes to its name."""
    from studio.generators import Request
    from studio.plugins import UnknownModel

    with engine.db.session() as session:
        row = session.get(Image, problem.image_ids[0])
        recipe, index = (dict(row.recipe or {}), row.index) if row is not None else ({}, 0)
    try:
        spec = engine.registry.model(recipe.get("model", ""))
    except UnknownModel as exc:
        problem.note = f"cannot remake: {exc}"
        return
    here = engine.settings.resolve_device()
    device = recipe.get("device") or here
    if str(device).startswith("cuda") and here == "cpu":
        problem.note = f"cannot remake: made on {device}, and this machine has no CUDA device"
        return
    try:
        generator = engine.cache.get(spec, device)
        now = generator.describe().get("weights_sha256")
        if recipe.get("weights_sha256") and now and now != recipe["weights_sha256"]:
            problem.note = f"cannot remake: the weights of model {spec.id!r} changed since"
            return
        request = Request(recipe["prompt"], recipe["seed"], dict(recipe.get("params") or {}), index=index)
        result = generator.generate([request], lambda done, total: None)[0]
        data = store.encode_png(result.image, recipe)
    except Exception as exc:  # noqa: BLE001 - any generator failure means: cannot remake
        problem.note = f"cannot remake: {one_line(exc, 200)}"
        return
    if hashlib.sha256(data).hexdigest() != problem.sha256:
        problem.note = "cannot remake: the recipe no longer gives the same bytes"
        return
    store.put_bytes(engine.settings.home, problem.path, problem.sha256, data, fsync=True)
    problem.repaired, problem.note = True, "remade from its recipe"
