"""Export images with their recipes, and import them into a gallery, without duplicates.

An export is a folder or a zip file holding the PNGs exactly as stored (so each keeps its
sha256 and its recipe chunk) plus ``manifest.json`` with ids and lineage. An import reads
such an export or loose PNGs and is all or nothing: every input is read and checked first
(PNG decodes, recipe present and sane, sha256 as the manifest says), then files are stored,
then all rows are added in one transaction. If anything fails, the files this import added
are removed again and nothing that was stored before is touched.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from sqlalchemy import select
from ulid import ULID

from studio import store
from studio.db import Image, Job, JobStatus
from studio.engine import Engine, check_prompt, check_text, core_version
from studio.errors import UsageError
from studio.gallery.query import Entry
from studio.gallery.sources import EXPORT_FORMAT, MANIFEST, Candidate, candidates
from studio.plumbing import atomic_path, one_line
from studio.store import StoreError

MANIFEST_VERSION = 1
ULID_CHARS = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
MAX_INDEX = 255


# ---- export ------------------------------------------------------------------------------


@dataclass
class Exported:
    target: Path
    images: int

    def as_dict(self) -> dict[str, Any]:
        return {"target": str(self.target), "images": self.images}


def export_name(entry: Entry) -> str:
    return f"{entry.job_id}-{entry.index}.png"


def manifest_entry(entry: Entry, recipe: dict[str, Any]) -> dict[str, Any]:
    return {
        "file": export_name(entry),
        "sha256": entry.sha256,
        "image_id": entry.image_id,
        "job_id": entry.job_id,
        "parent_job_id": entry.parent_id,
        "index": entry.index,
        "seed": entry.seed,
        "width": entry.width,
        "height": entry.height,
        "prompt": entry.prompt,
        "model": entry.model_id,
        "created_at": entry.created_at.isoformat(),
        "recipe": recipe,
    }


def export(engine: Engine, entries: Iterable[Entry], target: Path) -> Exported:
    """Write the images of ``entries`` (jobs without images are skipped) to a folder or a .zip."""
    home = engine.settings.home
    images = {e.image_id: e for e in entries if e.image_id is not None}
    if not images:
        raise UsageError("nothing to export: the selection has no images")
    recipes = _recipes(engine, list(images))
    files = [(export_name(e), e) for e in images.values()]
    manifest = {
        "format": EXPORT_FORMAT,
        "version": MANIFEST_VERSION,
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "core_version": core_version(),
        "images": [manifest_entry(e, recipes.get(e.image_id, {})) for e in images.values()],
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    bad = [(e, state) for _, e in files if (state := store.file_state(home, e.path, e.sha256)) != store.OK]
    if bad:
        entry, state = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise StoreError(
            f"export refused: the stored file of image {entry.image_id} is {state}{more}; nothing was written; "
            f"run `studio check --repair`, or leave those images out"
        )
    try:
        if target.suffix.lower() == ".zip":
            _write_zip(home, target, files, manifest_bytes)
        else:
            _write_folder(home, target, files, manifest_bytes)
    except OSError as exc:
        raise StoreError(f"cannot export to {target}: {exc.strerror or one_line(exc)}") from None
    return Exported(target, len(files))


def _recipes(engine: Engine, image_ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    with engine.db.session() as session:
        for start in range(0, len(image_ids), 500):
            chunk = image_ids[start : start + 500]
            found.update((i, r) for i, r in session.execute(select(Image.id, Image.recipe).where(Image.id.in_(chunk))))
    return found


def _write_zip(home: Path, target: Path, files: list[tuple[str, Entry]], manifest: bytes) -> None:
    if target.exists():
        raise UsageError(f"{target} already exists; choose another name")
    with atomic_path(target, suffix=".zip.part") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, entry in files:
            # the bytes written are the bytes that were hashed: a file damaged meanwhile is refused
            archive.writestr(name, store.read_verified(home, entry.path, entry.sha256))  # PNGs are compressed already
        archive.writestr(MANIFEST, manifest, compress_type=zipfile.ZIP_DEFLATED)


def _write_folder(home: Path, target: Path, files: list[tuple[str, Entry]], manifest: bytes) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} already exists and is not an empty folder; choose another")
    target.mkdir(parents=True, exist_ok=True)
    for name, entry in files:
        store.write_atomic(target / name, store.read_verified(home, entry.path, entry.sha256))
    store.write_atomic(target / MANIFEST, manifest)  # last: a folder with a manifest is complete


# ---- import ------------------------------------------------------------------------------


@dataclass
class Incoming:
    """One checked PNG, ready to store (its bytes are read again then, not kept in memory)."""

    name: str
    read: Callable[[], bytes]
    sha256: str
    recipe: dict[str, Any]
    width: int
    height: int
    meta: dict[str, Any]


@dataclass
class Imported:
    images: int = 0
    jobs: int = 0
    duplicates: int = 0
    job_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


MAX_RECIPE_CHARS = 64 * 1024  # a real recipe is about 1 KB
MAX_MODEL_ID_CHARS = 200


def check_recipe(recipe: dict[str, Any], name: str, engine: Engine | None = None) -> None:
    """The rules a submit follows, for a recipe that arrived in a file: a prompt (not empty, within
    the length limit, valid UTF-8, no NUL), a model id, a valid seed, parameters as an object; when
    the model is installed, the parameters fit its schema and an ``image`` parameter names a stored
    input, never a path. Refused with one line otherwise; nothing is stored."""
    if len(json.dumps(recipe)) > MAX_RECIPE_CHARS:
        raise StoreError(f"{name}: the Studio recipe is larger than {MAX_RECIPE_CHARS // 1024} KB; refused")
    if not isinstance(recipe.get("prompt"), str) or not recipe["prompt"].strip():
        raise StoreError(f"{name}: the Studio recipe has no prompt")
    try:
        check_prompt(recipe["prompt"])
        check_text(recipe.get("model"), "the model id")
    except UsageError as exc:
        raise StoreError(f"{name}: in the Studio recipe, {exc}") from None
    if not recipe["model"] or len(recipe["model"]) > MAX_MODEL_ID_CHARS:
        raise StoreError(f"{name}: the Studio recipe has no model")
    seed = recipe.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise StoreError(f"{name}: the Studio recipe has no valid seed")
    params = recipe.get("params", {})
    if not isinstance(params, dict):
        raise StoreError(f"{name}: the Studio recipe's params are not an object")
    if engine is None:
        return
    from studio.inputs import is_reference
    from studio.plugins import UnknownModel

    try:
        spec = engine.registry.model(recipe["model"])
    except UnknownModel:
        return  # kept as it is; a regen says which model is missing and checks the parameters then
    try:
        engine.check_params(spec, params)
    except UsageError as exc:
        raise StoreError(f"{name}: in the Studio recipe, {exc}") from None
    for p in spec.params:
        value = params.get(p.name)
        if p.type == "image" and value not in (None, "") and not (isinstance(value, str) and is_reference(value)):
            raise StoreError(f"{name}: the Studio recipe's parameter {p.name!r} names {value!r}, not a stored input "
                             f"(inputs/<sha256>.png); a recipe never names a file to open; refused")


def read_incoming(candidate: Candidate, engine: Engine | None = None) -> Incoming:
    data = candidate.read()
    sha = hashlib.sha256(data).hexdigest()
    expected = candidate.meta.get("sha256")
    if expected is not None and expected != sha:
        raise StoreError(f"{candidate.name}: sha256 differs from the manifest (changed or corrupt file)")
    recipe, width, height = store.parse_png(data, candidate.name)
    check_recipe(recipe, candidate.name, engine)
    return Incoming(candidate.name, candidate.read, sha, recipe, width, height, candidate.meta)


def gather(paths: Iterable[Path], engine: Engine | None = None) -> list[Incoming]:
    """Read and check every input; the first bad one refuses the whole import."""
    return [read_incoming(candidate, engine) for path in paths for candidate in candidates(Path(path))]


def _valid_ulid(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 26 and set(value) <= ULID_CHARS and value[0] <= "7"


def _group(items: list[Incoming]) -> dict[str, list[tuple[int, Incoming]]]:
    """Images by source job with their index: an export keeps its jobs together; a loose PNG
    (or a manifest entry without usable ids) is a job of its own."""
    groups: dict[str, list[tuple[int, Incoming]]] = {}
    for item in items:
        job_id, index = item.meta.get("job_id"), item.meta.get("index")
        usable = _valid_ulid(job_id) and isinstance(index, int) and 0 <= index <= MAX_INDEX
        if usable and item.recipe["seed"] - index >= 0:
            if any(i == index for i, _ in groups.get(job_id, [])):
                raise StoreError(f"{item.name}: the manifest lists image {index} of job {job_id} twice")
            groups.setdefault(job_id, []).append((index, item))
        else:
            groups[f"loose:{item.sha256}"] = [(0, item)]
    return groups


def import_paths(engine: Engine, paths: Iterable[Path]) -> Imported:
    """Add the images found under ``paths`` to the gallery; images already there are skipped."""
    items = gather(paths, engine)
    result = Imported()
    with engine.db.session() as session:
        known = set()
        shas = [i.sha256 for i in items]
        for start in range(0, len(shas), 500):
            known.update(session.scalars(select(Image.sha256).where(Image.sha256.in_(shas[start : start + 500]))))
    fresh = []
    for item in items:
        if item.sha256 not in known:
            known.add(item.sha256)  # the same image twice in the input is imported once
            fresh.append(item)
    result.duplicates = len(items) - len(fresh)
    if not fresh:
        return result
    groups = _group(fresh)
    home = engine.settings.ensure_home()
    created: list[Path] = []
    try:
        stored = {}
        for item in fresh:
            data = item.read()
            if hashlib.sha256(data).hexdigest() != item.sha256:
                raise StoreError(f"{item.name}: changed while it was being imported")
            file, new = store.save_png_bytes(home, data, item.width, item.height)
            stored[item.sha256] = file
            if new:
                created.append(home / file.path)
        _add_rows(engine, groups, stored, result)
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    return result


def _job_row(job_id: str, created_at: datetime, index0: int, recipe: dict[str, Any], count: int) -> Job:
    now = datetime.now(timezone.utc)
    return Job(
        id=job_id,
        prompt=recipe["prompt"].strip(),
        model_id=recipe["model"],
        params=dict(recipe.get("params") or {}),
        seed=recipe["seed"] - index0,
        count=count,
        status=JobStatus.succeeded.value,
        priority=0,
        attempts=0,
        error=None,
        progress_done=1,
        progress_total=1,
        cancel_requested=False,
        worker_id="import",
        parent_id=None,
        created_at=created_at,
        started_at=None,
        finished_at=now,
    )


def _add_rows(engine: Engine, groups, stored: dict[str, store.StoredFile], result: Imported) -> None:
    """Jobs and images in one transaction. An export's ids are kept when free, so lineage and
    ids survive a round trip into an empty gallery; taken ids get fresh ULIDs."""
    with engine.db.session() as session:
        originals = [g for g in groups if not g.startswith("loose:")]
        taken = set(session.scalars(select(Job.id).where(Job.id.in_(originals)))) if originals else set()
        new_ids = {g: g if g in originals and g not in taken else str(ULID()) for g in groups}
        jobs = []
        for group, members in groups.items():
            members.sort(key=lambda pair: pair[0])
            index0, first = members[0]
            job_id = new_ids[group]
            kept = job_id == group
            created_at = ULID.from_str(job_id).datetime if kept else datetime.now(timezone.utc)
            job = _job_row(job_id, created_at, index0, first.recipe, members[-1][0] + 1)
            session.add(job)
            jobs.append((job, first.meta.get("parent_job_id")))
            for index, item in members:
                image_id = item.meta.get("image_id")
                if not (kept and _valid_ulid(image_id) and session.get(Image, image_id) is None):
                    image_id = str(ULID())
                file = stored[item.sha256]
                session.add(
                    Image(
                        id=image_id, job_id=job_id, index=index, seed=item.recipe["seed"], sha256=file.sha256,
                        path=file.path, width=file.width, height=file.height, recipe=item.recipe,
                    )
                )
                result.images += 1
            result.jobs += 1
            result.job_ids.append(job_id)
        session.flush()
        for job, parent in jobs:  # after every job exists, so the order of insertion never matters
            if parent in new_ids:
                job.parent_id = new_ids[parent]
            elif _valid_ulid(parent) and session.get(Job, parent) is not None:
                job.parent_id = parent
